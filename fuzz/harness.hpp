// fuzz/harness.hpp: what every fuzz target shares: the invariant every error message keeps, and a
// scratch file for the readers that take a path.
//
// Why abort(): libFuzzer reports a crash (and saves the input) on a signal, not on a returned value,
// so an invariant that does not hold must end the process. Only eigenformer::error is caught by the
// targets: it is all the readers document that they throw, and anything else escaping (std::bad_alloc,
// std::length_error, nlohmann::json's own exceptions) is a finding.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <eigenformer/error.hpp>

namespace eigenformer::fuzz {

/// The longest message an error may have. The readers quote file contents in excerpts of at most
/// 64 to 131 bytes (detail::text_excerpt, json_error_excerpt); the longest message they build
/// (two tensors overlap: a path, two names and two ranges) stays near 450 bytes with our paths.
inline constexpr std::size_t max_message_bytes = 512;

/// Aborts, printing why, unless `e`'s message is one line of at most max_message_bytes: a hostile
/// file must not flood a log or a terminal through an error message.
inline void check_message(const eigenformer::error& e) {
  const std::string_view what = e.what();
  const char* broken = nullptr;
  if (what.size() > max_message_bytes) broken = "is longer than the limit";
  else if (what.find_first_of(std::string_view("\n\r\0", 3)) != std::string_view::npos) broken = "is not one line";
  else if (what.empty()) broken = "is empty";
  if (!broken) return;
  std::fprintf(stderr, "error message %s (%zu bytes, limit %zu); first 300 bytes:\n%.*s\n", broken, what.size(),
               max_message_bytes, static_cast<int>(std::min<std::size_t>(what.size(), 300)), what.data());
  std::abort();
}

/// Aborts with `what` unless `condition`: an invariant of a successful parse.
inline void require(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "invariant violated: %s\n", what);
  std::abort();
}

/// One file per process, rewritten for every input and removed at exit: under /dev/shm when it can
/// be written (no disk writes at thousands of inputs a second), else under $TMPDIR or /tmp. The name
/// holds the process id, so that parallel runs (ctest -j, libFuzzer -jobs) never share it.
class scratch_file {
 public:
  explicit scratch_file(std::string_view stem) {
    std::filesystem::path dir = "/dev/shm";
    if (::access(dir.c_str(), W_OK) != 0) {
      const char* tmp = std::getenv("TMPDIR");
      dir = tmp && *tmp ? tmp : "/tmp";
    }
    path_ = dir / ("eigenformer-fuzz-" + std::to_string(::getpid()) + "-" + std::string(stem));
  }
  scratch_file(const scratch_file&) = delete;
  scratch_file& operator=(const scratch_file&) = delete;
  ~scratch_file() { ::unlink(path_.c_str()); }

  /// Replaces the file's contents with `data`; aborts if it cannot (the harness is broken, not the
  /// library: carrying on would test nothing).
  const std::filesystem::path& write(const std::uint8_t* data, std::size_t size) {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0;
    while (ok && size > 0) {
      const ::ssize_t n = ::write(fd, data, size);
      ok = n > 0;
      if (ok) {
        data += n;
        size -= static_cast<std::size_t>(n);
      }
    }
    if (fd >= 0 && ::close(fd) != 0) ok = false;
    if (!ok) {
      std::perror(path_.c_str());
      std::abort();
    }
    return path_;
  }

  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace eigenformer::fuzz
