// TensorBoard event files: record framing, CRCs, Event messages (read_scalar_events), as a run
// reads its own directory's files back when it resumes.
#include "fuzz.h"
#include "vicreg/io/tensorboard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return vicreg::fuzz::run(
      [&] { vicreg::read_scalar_events(vicreg::fuzz::input_file(data, size, ".tfevents")); });
}
