// eigenformer/detail/file.hpp: the two file primitives the io/ readers and writers share.
//
// mapped_file: a whole file mapped read-only (POSIX mmap). Why: model weights are read once, in place,
// without a second copy in a read buffer, and a reader touches only the pages it uses.
// Caveat of every mmap: if another process truncates the file while it is mapped, touching a page
// past the new end raises SIGBUS. Files are validated against the size seen at open time.
//
// atomic_file_writer: writes a file whole or not at all. Bytes go to a fresh temporary file in the
// target's directory (same file system, so the final std::filesystem::rename is atomic on POSIX);
// the target appears only on commit(), and a writer destroyed before commit() removes its temporary.
// A reader therefore never sees a half-written model or array, even if the writer throws or dies.
// No fsync: durability across a power loss is not promised, only all-or-nothing visibility.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../error.hpp"

namespace eigenformer::detail {

/// "<path>: <what>: <strerror(errno)>"
inline std::string system_message(const std::filesystem::path& path, const char* what, int err) {
  return path.string() + ": " + what + ": " + std::generic_category().message(err);
}

/// A file mapped read-only in its entirety; movable, not copyable. An empty file maps to an empty span.
class mapped_file {
 public:
  mapped_file() = default;

  /// Throws eigenformer::error naming `path` if it cannot be opened, is not a regular file, or
  /// cannot be mapped.
  explicit mapped_file(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw error(system_message(path, "cannot open", errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw error(system_message(path, "cannot stat", err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw error(path.string() + ": not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {  // mmap of length 0 is an error; an empty file simply has no bytes
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw error(system_message(path, "cannot map", err));
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);  // the mapping keeps the file alive
  }

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  mapped_file& operator=(mapped_file&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~mapped_file() { release(); }

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  std::size_t size() const noexcept { return size_; }

 private:
  void release() noexcept {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Writes `target` whole or not at all (see the top of this file). Usage:
///   atomic_file_writer out(path); out.write(bytes); ...; out.commit();
/// Every failure throws eigenformer::error naming `target`.
class atomic_file_writer {
 public:
  explicit atomic_file_writer(std::filesystem::path target) : target_(std::move(target)) {
    const std::filesystem::path dir = target_.has_parent_path() ? target_.parent_path() : std::filesystem::path(".");
    // O_EXCL makes the name ours even with concurrent writers (threads or processes); mode 0666 is
    // narrowed by the umask like any newly created file.
    std::string stem = ".";  // built with += : GCC 12 warns falsely (-Wrestrict) on "." + std::string
    stem += target_.filename().string();
    stem += ".tmp-" + std::to_string(::getpid()) + "-";
    for (int attempt = 0; fd_ < 0; ++attempt) {
      temp_ = dir / (stem + std::to_string(attempt));
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ < 0 && (errno != EEXIST || attempt >= 1000)) {
        throw error(system_message(target_, "cannot create a temporary file to write", errno));
      }
    }
    buffer_.reserve(buffer_capacity);
  }

  atomic_file_writer(const atomic_file_writer&) = delete;
  atomic_file_writer& operator=(const atomic_file_writer&) = delete;

  ~atomic_file_writer() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
  }

  void write(std::span<const std::byte> bytes) {
    if (bytes.size() >= buffer_capacity) {
      flush();
      write_all(bytes.data(), bytes.size());
      return;
    }
    if (buffer_.size() + bytes.size() > buffer_capacity) flush();
    buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  }
  void write(std::string_view text) { write(std::as_bytes(std::span<const char>(text.data(), text.size()))); }

  /// Flushes, closes and renames the temporary file onto the target.
  void commit() {
    flush();
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) throw error(system_message(target_, "cannot write", errno));
    std::error_code ec;
    std::filesystem::rename(temp_, target_, ec);
    if (ec) throw error(target_.string() + ": cannot move the written file into place: " + ec.message());
    committed_ = true;
  }

 private:
  static constexpr std::size_t buffer_capacity = std::size_t{1} << 20;

  void flush() {
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

  void write_all(const std::byte* p, std::size_t n) {
    while (n > 0) {
      const ::ssize_t written = ::write(fd_, p, n);
      if (written < 0) {
        if (errno == EINTR) continue;
        throw error(system_message(target_, "cannot write", errno));
      }
      p += written;
      n -= static_cast<std::size_t>(written);
    }
  }

  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
  std::vector<std::byte> buffer_;
};

}  // namespace eigenformer::detail
