// FileChangeWatcher: calls a function when a file changes, checked every interval. Kubernetes
// updates a mounted Secret by swapping a symlink to a new directory, and nobody sends the daemon a
// SIGHUP, so a token file must be noticed on its own. "Changed" means the file that the path
// resolves to now differs in device, inode, size or modification time from the last look; a path
// that cannot be stat'ed is skipped until it can (the callback decides what a bad file means).
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "server/security/periodic_thread.h"

namespace attnd {

class FileChangeWatcher {
 public:
  // Starts watching `path` (its state now is the baseline). `changed` runs on the watcher's thread.
  FileChangeWatcher(std::string path, absl::Duration interval, std::function<void()> changed);

 private:
  struct Identity {
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = -1;
    int64_t mtime_ns = 0;
    bool operator==(const Identity&) const = default;
  };
  static std::optional<Identity> Look(const std::string& path);
  void Check();

  const std::string path_;
  const std::function<void()> changed_;
  std::optional<Identity> last_;  // only the thread touches it after construction
  PeriodicThread thread_;         // last: stops before the members it reads go
};

}  // namespace attnd
