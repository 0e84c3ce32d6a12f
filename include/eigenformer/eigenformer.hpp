// eigenformer/eigenformer.hpp: the umbrella header. Includes the public headers, nothing else.
// Not io/npy.hpp: NumPy arrays are for the command-line tool and tests, and a host application
// should not compile them; include <eigenformer/io/npy.hpp> where you need it. extern_templates.hpp
// comes last: with eigenformer::compiled it declares the heavy float and double instantiations
// extern, so that this translation unit does not compile them again.
#pragma once

#include "version.hpp"
#include "types.hpp"
#include "error.hpp"
#include "tensor.hpp"
#include "threads.hpp"
#include "ops.hpp"
#include "packed_weights.hpp"
#include "config.hpp"
#include "batch.hpp"
#include "weights.hpp"
#include "moe_runtime.hpp"
#include "workspace.hpp"
#include "positional.hpp"
#include "rotary.hpp"
#include "kv_cache.hpp"
#include "attention.hpp"
#include "layers/linear.hpp"
#include "layers/feed_forward.hpp"
#include "layers/gated_feed_forward.hpp"
#include "layers/moe.hpp"
#include "layers/encoder_layer.hpp"
#include "layers/decoder_layer.hpp"
#include "model.hpp"
#include "decode.hpp"
#include "sampling/sampling.hpp"
#include "io/safetensors.hpp"
#include "io/model_loader.hpp"
#include "extern_templates.hpp"
