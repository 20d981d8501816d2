// Weights in and out of the PyTorch world, in one include: safetensors files (io/safetensors.h),
// PyTorch's torch.save files (io/torch_pickle.h), and state dicts with torchvision's names
// (io/state_dict.h).
#pragma once

#include "vicreg/io/named_tensors.h"
#include "vicreg/io/safetensors.h"
#include "vicreg/io/state_dict.h"
#include "vicreg/io/torch_pickle.h"
