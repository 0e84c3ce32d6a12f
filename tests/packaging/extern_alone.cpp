// extern_templates.hpp compiles alone (and twice) with EIGENFORMER_EXTERN_TEMPLATES defined, as
// eigenformer::compiled's users see it; the self-contained header check sees it without.
#include <eigenformer/extern_templates.hpp>
#include <eigenformer/extern_templates.hpp>
