// Pretraining in one include: the configuration (run/config.h), the experiment directory and
// its files (run/artifacts.h), progress reporting (run/progress.h) and the training loop
// (run/trainer.h).
#pragma once

#include "vicreg/run/artifacts.h"
#include "vicreg/run/config.h"
#include "vicreg/run/progress.h"
#include "vicreg/run/trainer.h"
