// Test helpers for hostile inputs: a FIFO that a reader must refuse instead of blocking on, and
// deeply nested JSON text.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace eigenformer::testing {

/// `depth` nested JSON arrays around `inner`: "[[[...inner...]]]".
inline std::string nested_arrays(std::size_t depth, const std::string& inner = "1") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

/// Creates a FIFO at `path`, calls `read` (which must throw) on another thread and returns the
/// message it threw. If `read` is still blocked after a few seconds (it opened the FIFO and waits for a
/// writer), records a test failure and unblocks it by opening the FIFO for writing, so that a wrong
/// implementation fails the test instead of hanging the whole run.
inline std::string message_for_fifo(const std::filesystem::path& path, std::function<void()> read) {
  std::filesystem::remove(path);
  if (::mkfifo(path.c_str(), 0600) != 0) {
    ADD_FAILURE() << "mkfifo " << path << " failed";
    return {};
  }
  auto result = std::async(std::launch::async, [read = std::move(read)]() -> std::string {
    try {
      read();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no exception)";
  });
  if (result.wait_for(std::chrono::seconds(5)) == std::future_status::timeout) {
    ADD_FAILURE() << "reading the FIFO " << path << " blocked (opened before checking the file type)";
    const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);  // a writer lets the blocked open return
    if (fd >= 0) ::close(fd);
  }
  const std::string message = result.get();
  std::filesystem::remove(path);
  return message;
}

}  // namespace eigenformer::testing
