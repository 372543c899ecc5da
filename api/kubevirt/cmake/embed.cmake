# Writes a C++ source that holds the bytes of one file, so the daemon never reads schema or
# description files at run time. Invoked at build time:
#   cmake -DINPUT=<file> -DOUTPUT=<file.cc> -DSYMBOL=<name> -P embed.cmake
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR size "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
# Break the initializer into lines of 16 bytes to keep compilers and editors happy.
string(REGEX REPLACE "(('[^']*',){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp"
  "// Generated from ${INPUT} by api/kubevirt/cmake/embed.cmake; do not edit.\n"
  "#include <cstddef>\n#include <string_view>\n"
  "namespace edgevirt::api::kubevirt::embedded {\n"
  "namespace {\nconstexpr char kBytes[] = {\n${bytes}'\\0'};\n}  // namespace\n"
  "extern const std::string_view ${SYMBOL}(kBytes, ${size});\n"
  "}  // namespace edgevirt::api::kubevirt::embedded\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
