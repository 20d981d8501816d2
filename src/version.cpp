// The library's version, compiled in (version.h is generated from the project() call).
#include "vicreg/version.h"

namespace vicreg {

const char* version() { return VICREG_VERSION_STRING; }

}  // namespace vicreg
