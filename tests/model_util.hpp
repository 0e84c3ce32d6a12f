// Forwarding header (moved): use support/random_model.hpp and test_util.hpp.
#pragma once
#include "support/random_model.hpp"
#include "test_util.hpp"
