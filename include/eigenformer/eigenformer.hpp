// eigenformer/eigenformer.hpp: the umbrella header. Includes the public headers, nothing else.
#pragma once

#include "version.hpp"
#include "types.hpp"
#include "error.hpp"
#include "tensor.hpp"
#include "threads.hpp"
#include "ops.hpp"
