// CIFAR-10/100 binary batches (read_cifar_bin). The first byte picks CIFAR-100 (odd) or
// CIFAR-10 (even); the rest is the file.
#include "fuzz.h"
#include "vicreg/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool cifar100 = (data[0] & 1) != 0;
  return vicreg::fuzz::run([&] {
    vicreg::read_cifar_bin({vicreg::fuzz::input_file(data + 1, size - 1, ".bin")}, cifar100);
  });
}
