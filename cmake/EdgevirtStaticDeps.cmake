# Static linking of edgevirtd's dependencies (DESIGN.md "Linking"; option EDGEVIRT_STATIC_DEPS).
#
# edgevirt_link_static_deps(TARGET) links TARGET (only it: the test binaries keep the shared
# libraries) against the static archives of the dependencies where the distribution ships one
# and a static copy cannot meet a shared copy of the same library in the process:
#   LMDB, yaml-cpp, libbpf with libelf, libarchive with libbz2.
# Kept shared: libvirt, libsystemd, libcurl, OpenSSL (libcurl and libvirt load libssl.so, so a
# second, static OpenSSL would be a second copy), and whatever these already load: zlib, xz,
# zstd, lz4, libxml2, nettle, libacl (libarchive's other dependencies come from there), glibc.
# A missing archive (AlmaLinux 9 ships few) is reported and that library stays shared.
#
# The swap happens in the link command itself (cmake/link-static-deps.sh as the target's
# CXX_LINKER_LAUNCHER): the imported targets carry the shared libraries' paths to every
# consumer, and a static archive placed anywhere else on the line would come too early or too
# late for the linker.
#
# Sets EDGEVIRT_LINKAGE_ALLOWED (parent scope): regular expressions of the DT_NEEDED entries
# the linked binary may have (tests/package/check-linkage.sh).
set(EDGEVIRT_LINKAGE_SYSTEM
  "libvirt\\.so\\..*" "libvirt-qemu\\.so\\..*" "libsystemd\\.so\\..*" "libcurl\\.so\\..*"
  "libssl\\.so\\..*" "libcrypto\\.so\\..*"
  "libz\\.so\\..*" "liblzma\\.so\\..*" "libzstd\\.so\\..*" "liblz4\\.so\\..*" "libxml2\\.so\\..*"
  "libnettle\\.so\\..*" "libacl\\.so\\..*"
  "libc\\.so\\..*" "libm\\.so\\..*" "libpthread\\.so\\..*" "libdl\\.so\\..*" "librt\\.so\\..*"
  "ld-linux-x86-64\\.so\\..*" "ld-linux-aarch64\\.so\\..*")

function(edgevirt_static_archive var file)
  find_library(${var} NAMES ${file} NO_CACHE)
  set(${var} ${${var}} PARENT_SCOPE)
endfunction()

function(edgevirt_link_static_deps target)
  set(allowed ${EDGEVIRT_LINKAGE_SYSTEM})
  set(specs)
  set(missing)
  edgevirt_static_archive(lmdb_a liblmdb.a)
  edgevirt_static_archive(yaml_a libyaml-cpp.a)
  edgevirt_static_archive(bpf_a libbpf.a)
  edgevirt_static_archive(elf_a libelf.a)
  edgevirt_static_archive(archive_a libarchive.a)
  edgevirt_static_archive(bz2_a libbz2.a)

  if(lmdb_a)
    list(APPEND specs --static "lmdb=${lmdb_a}")
  else()
    list(APPEND missing lmdb)
    list(APPEND allowed "liblmdb\\.so\\..*")
  endif()
  if(yaml_a)
    list(APPEND specs --static "yaml-cpp=${yaml_a}")
  else()
    list(APPEND missing yaml-cpp)
    list(APPEND allowed "libyaml-cpp\\.so\\..*")
  endif()

  if(bpf_a)
    if(elf_a)
      list(APPEND specs --static "bpf=${bpf_a},${elf_a},-lz")
    else()
      list(APPEND specs --static "bpf=${bpf_a},-lelf,-lz")
      list(APPEND missing elf)
      list(APPEND allowed "libelf\\.so\\..*")
    endif()
  else()
    list(APPEND missing bpf)
    list(APPEND allowed "libbpf\\.so\\..*" "libelf\\.so\\..*")
  endif()

  if(archive_a)
    # What libarchive.a needs, in the linker's order (pkg-config --static); libbz2 static too
    # (nothing else in the process loads it), the rest shared (see above).
    execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} --static --libs-only-l libarchive
                    OUTPUT_VARIABLE archive_libs OUTPUT_STRIP_TRAILING_WHITESPACE)
    separate_arguments(archive_libs UNIX_COMMAND "${archive_libs}")
    set(spec "archive=${archive_a}")
    set(archive_allowed)
    set(archive_missing)
    foreach(l IN LISTS archive_libs)
      string(REGEX REPLACE "^-l" "" name "${l}")
      if(name STREQUAL "archive")
        continue()
      elseif(name STREQUAL "bz2" AND bz2_a)
        string(APPEND spec ",${bz2_a}")
        continue()
      endif()
      # -lNAME needs the development link libNAME.so (Debian: liblz4-dev, libacl1-dev, ...).
      find_library(dep_so NAMES ${name} NO_CACHE)
      if(NOT dep_so)
        list(APPEND archive_missing lib${name}.so)
      endif()
      unset(dep_so)
      string(APPEND spec ",${l}")
      list(APPEND archive_allowed "lib${name}\\.so\\..*")
    endforeach()
    if(archive_missing)
      message(STATUS "edgevirtd: libarchive.a needs ${archive_missing} (development packages): "
                     "libarchive linked shared")
      set(archive_a "")
    else()
      list(APPEND specs --static "${spec}")
      list(APPEND allowed ${archive_allowed})
    endif()
  endif()
  if(NOT archive_a)
    list(APPEND missing archive)
    list(APPEND allowed "libarchive\\.so\\..*" "libbz2\\.so\\..*")
  endif()

  if(missing)
    message(STATUS "edgevirtd: no static archive for: ${missing} (linked shared)")
  endif()
  list(REMOVE_DUPLICATES allowed)
  set_target_properties(${target} PROPERTIES CXX_LINKER_LAUNCHER
    "${PROJECT_SOURCE_DIR}/cmake/link-static-deps.sh;${specs};--")
  set(EDGEVIRT_LINKAGE_ALLOWED ${allowed} PARENT_SCOPE)
endfunction()
