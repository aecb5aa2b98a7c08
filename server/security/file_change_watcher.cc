#include "server/security/file_change_watcher.h"

#include <utility>

namespace attnd {

FileChangeWatcher::FileChangeWatcher(std::string path, absl::Duration interval, std::function<void()> changed)
    : path_(std::move(path)), changed_(std::move(changed)), last_(Look(path_)), thread_(interval, [this] { Check(); }) {}

std::optional<FileChangeWatcher::Identity> FileChangeWatcher::Look(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return Identity{st.st_dev, st.st_ino, st.st_size, int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec};
}

void FileChangeWatcher::Check() {
  const std::optional<Identity> now = Look(path_);
  if (!now.has_value() || now == last_) return;
  last_ = now;
  changed_();
}

}  // namespace attnd
