// The eigenformer command-line tool (shared/spec/cli.md). Placeholder until the model lands.
#include <eigenformer/eigenformer.hpp>

#include <cstdio>

int main() {
  std::printf("eigenformer %s\n", EIGENFORMER_VERSION_STRING);
  return 0;
}
