// eigenformer/detail/file.hpp: the two file primitives the io/ readers and writers share.
//
// input_file: a regular file opened read-only, read with pread() into buffers the caller owns.
// Why not mmap: every reader copies what it reads anyway (tensors are converted or copied into
// aligned storage), and with a map a file truncated by another process while it is read kills the
// reader with SIGBUS. With pread a file that shrinks after it was validated is an error naming the
// file. Why O_NONBLOCK at open: opening a FIFO for reading blocks until a writer appears; the file
// type is checked (fstat) before anything is read, and anything but a regular file is refused.
//
// atomic_file_writer: writes a file whole or not at all. Bytes go to a fresh temporary file in the
// target's directory (same file system, so the final std::filesystem::rename is atomic on POSIX);
// the target appears only on commit(), and a writer destroyed before commit() removes its temporary.
// A reader therefore never sees a half-written model or array, even if the writer throws or dies.
// No fsync: durability across a power loss is not promised, only all-or-nothing visibility.
//
// text_excerpt, json_error_excerpt: how error messages quote a file's contents: briefly and on one line,
// whatever the file holds (a 5 MB unterminated string must not become a 5 MB message).
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../error.hpp"

namespace eigenformer::detail {

/// At most `max` bytes of `text` for an error message, on one line: control characters as \xNN, and
/// "..." after a cut (made at a UTF-8 character boundary).
inline std::string text_excerpt(std::string_view text, std::size_t max = 64) {
  std::string out;
  std::size_t i = 0;
  for (; i < text.size() && out.size() < max; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7F) {
      constexpr char hex[] = "0123456789ABCDEF";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (i == text.size()) return out;
  while (i < text.size() && !out.empty() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) {
    // the cut fell inside a multi-byte character: drop its first bytes too
    const auto c = static_cast<unsigned char>(out.back());
    out.pop_back();
    if ((c & 0xC0) != 0x80) break;
  }
  return out + "...";
}

/// "\"" + text + "\"", built by appending: g++ 12 warns about `"\"" + std::string&&` (a false
/// -Wrestrict, GCC bug 105329).
inline std::string quote_text(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  out += text;
  out += '"';
  return out;
}

/// nlohmann's parse error message with its "last read: '...'" excerpt (the whole rest of an unterminated
/// string, say) cut to 64 bytes, on one line.
inline std::string json_error_excerpt(std::string_view what) {
  constexpr std::string_view marker = "last read: '";
  const auto at = what.find(marker);
  if (at == std::string_view::npos) return text_excerpt(what, 300);
  std::string_view read = what.substr(at + marker.size());
  if (!read.empty() && read.back() == '\'') read.remove_suffix(1);
  return text_excerpt(what.substr(0, at + marker.size()), 200) + text_excerpt(read, 64) + "'";
}

/// "<path>: <what>: <strerror(errno)>"
inline std::string system_message(const std::filesystem::path& path, const char* what, int err) {
  return path.string() + ": " + what + ": " + std::generic_category().message(err);
}

/// A regular file open for reading at any offset; movable, not copyable. Its size is the one seen at open.
class input_file {
 public:
  input_file() = default;

  /// Throws eigenformer::error naming `path` if the path is empty, cannot be opened, or does not name
  /// a regular file (a directory, FIFO, socket or device: "<path>: not a regular file").
  explicit input_file(std::filesystem::path path) : path_(std::move(path)) {
    if (path_.empty()) throw error("empty path, expected the name of a file to read");
    // O_NONBLOCK: a FIFO would otherwise block this open forever; it has no effect on regular files.
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) throw error(system_message(path_, "cannot open", errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      close_fd();
      throw error(system_message(path_, "cannot stat", err));
    }
    if (!S_ISREG(st.st_mode)) {
      close_fd();
      throw error(path_.string() + ": not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }

  input_file(const input_file&) = delete;
  input_file& operator=(const input_file&) = delete;
  input_file(input_file&& other) noexcept
      : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), size_(std::exchange(other.size_, 0)) {}
  input_file& operator=(input_file&& other) noexcept {
    if (this != &other) {
      close_fd();
      path_ = std::move(other.path_);
      fd_ = std::exchange(other.fd_, -1);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~input_file() { close_fd(); }

  const std::filesystem::path& path() const noexcept { return path_; }
  /// The size in bytes when the file was opened (what validation uses).
  std::uint64_t size() const noexcept { return size_; }

  /// Reads bytes [offset, offset + n) into `dst`. Throws eigenformer::error naming the file if it cannot
  /// be read or now ends before offset + n (shrunk since it was opened): never a signal.
  void read_at(std::uint64_t offset, std::byte* dst, std::size_t n) const {
    const std::uint64_t end = offset + n;  // callers pass ranges validated against size()
    while (n > 0) {
      const ::ssize_t got = ::pread(fd_, dst, n, static_cast<::off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw error(system_message(path_, "cannot read", errno));
      }
      if (got == 0) {
        throw error(path_.string() + ": file ends at byte " + std::to_string(offset) + ", expected " +
                    std::to_string(end) + " bytes (" + std::to_string(size_) +
                    " when opened): truncated while being read?");
      }
      dst += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

  /// The whole file, as long as it was at open (throws like read_at if it shrank since).
  std::vector<std::byte> read_all() const {
    std::vector<std::byte> bytes(static_cast<std::size_t>(size_));
    read_at(0, bytes.data(), bytes.size());
    return bytes;
  }

 private:
  void close_fd() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::filesystem::path path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

/// Writes `target` whole or not at all (see the top of this file). Usage:
///   atomic_file_writer out(path); out.write(bytes); ...; out.commit();
/// Every failure throws eigenformer::error naming `target`.
/// The file a write to `path` replaces: the end of its chain of symbolic links (a dangling link
/// names the file to create), so that the link stays a link and its target gets the bytes, as
/// shells and cp do; `path` itself otherwise. Throws eigenformer::error naming `path` if that file
/// exists and is read-only (no write permission for anyone, or none for this user): a rename would
/// replace it silently, as only the folder's permission counts for a rename.
inline std::filesystem::path writable_target(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  fs::path p = path;
  std::error_code ec;
  for (int hops = 0; fs::is_symlink(fs::symlink_status(p, ec)); ++hops) {
    if (hops == 40) throw error(path.string() + ": too many levels of symbolic links");
    const fs::path link = fs::read_symlink(p, ec);
    if (ec) throw error(path.string() + ": cannot read the symbolic link: " + ec.message());
    p = link.is_absolute() ? link : p.parent_path() / link;
  }
  const auto st = fs::status(p, ec);
  if (fs::is_regular_file(st)) {
    const auto w = fs::perms::owner_write | fs::perms::group_write | fs::perms::others_write;
    if ((st.permissions() & w) == fs::perms::none || (::access(p.c_str(), W_OK) != 0 && errno == EACCES)) {
      throw error((p == path ? path.string() : path.string() + " (" + p.string() + ")") + ": read-only, not replaced");
    }
  }
  return p;
}

class atomic_file_writer {
 public:
  /// Writes `target`, or the file its symbolic links lead to (writable_target); an existing
  /// file keeps its permission bits.
  explicit atomic_file_writer(const std::filesystem::path& target) : target_(writable_target(target)) {
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
    // A replaced file keeps its mode (a 0600 file must not come back 0644).
    struct stat st {};
    if (::stat(target_.c_str(), &st) == 0 && S_ISREG(st.st_mode)) ::fchmod(fd_, st.st_mode & 07777);
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
