// A real block device for a test: a loop device (losetup) over a fresh sparse file, detached
// when the object goes (also after a failed REQUIRE). Needs root. A test killed by a timeout
// cannot detach it: put the backing file under a QemuTestRoot, whose vmm_reap_qemu cleanup
// detaches every loop device backed by a file under a registered root.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/exec.h"
#include "tests/support/catch.h"

namespace edgevirt::testing {

class LoopDevice {
 public:
  // Creates `backing_file` (sparse, `size_bytes`) and attaches a free loop device to it.
  LoopDevice(const std::string& backing_file, uint64_t size_bytes) : file_(backing_file) {
    {
      std::ofstream out(file_, std::ios::binary | std::ios::trunc);
      REQUIRE(out.good());
    }
    std::filesystem::resize_file(file_, size_bytes);
    auto r = ExecChecked({"losetup", "--find", "--show", file_});
    if (!r) FAIL("losetup " << file_ << ": " << r.error().ToString());
    device_ = r->stdout_text;
    while (!device_.empty() && (device_.back() == '\n' || device_.back() == ' ')) {
      device_.pop_back();
    }
    struct stat st {};
    REQUIRE(::stat(device_.c_str(), &st) == 0);
    REQUIRE(S_ISBLK(st.st_mode));
  }
  ~LoopDevice() {
    if (!device_.empty()) (void)Exec({"losetup", "--detach", device_});
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;

  const std::string& path() const { return device_; }  // e.g. "/dev/loop3"
  const std::string& backing_file() const { return file_; }

 private:
  std::string file_;
  std::string device_;
};

}  // namespace edgevirt::testing
