// eigenformer/sampling/sampling.hpp: every sampling header. Everything they declare lives in
// namespace eigenformer::sampling (helpers in eigenformer::sampling::detail).
#pragma once

#include "candidates.hpp"
#include "sampler.hpp"
#include "chain.hpp"
#include "greedy.hpp"
#include "temperature.hpp"
#include "top_k.hpp"
#include "top_p.hpp"
#include "min_p.hpp"
#include "penalties.hpp"
#include "distribution.hpp"
#include "presets.hpp"
