// A temporary directory for a test, removed with everything in it when the object goes.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "tests/support/catch.h"

namespace edgevirt::testing {

class TempDir {
 public:
  // Made under $TMPDIR (or /tmp) as "<prefix>-XXXXXX".
  explicit TempDir(const std::string& prefix = "ev-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
  // The path of `name` inside, as a string.
  std::string Path(std::string_view name) const { return (path_ / name).string(); }
  // Writes `text` to `name` inside and returns its path.
  std::filesystem::path Write(std::string_view name, const std::string& text) const {
    auto p = path_ / name;
    std::ofstream(p) << text;
    return p;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace edgevirt::testing
