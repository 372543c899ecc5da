// PPM (QEMU's screendump format) to PNG with zlib. See console.h.
#include <zlib.h>

#include <cctype>
#include <cstdint>
#include <string>

#include "vmm/console.h"

namespace edgevirt::vmm {
namespace {

constexpr uint32_t kMaxDimension = 16384;
constexpr char kPngSignature[] = "\x89PNG\r\n\x1a\n";

void PutU32(std::string& out, uint32_t v) {
  out.push_back(char(v >> 24));
  out.push_back(char(v >> 16));
  out.push_back(char(v >> 8));
  out.push_back(char(v));
}

uint32_t GetU32(std::string_view s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 |
         uint32_t(uint8_t(s[at + 2])) << 8 | uint32_t(uint8_t(s[at + 3]));
}

void PutChunk(std::string& out, std::string_view type, std::string_view data) {
  PutU32(out, uint32_t(data.size()));
  const size_t start = out.size();
  out.append(type);
  out.append(data);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(out.data() + start), uInt(out.size() - start));
  PutU32(out, uint32_t(crc));
}

// One header number of a PPM: whitespace and '#' comments before it.
bool ReadNumber(std::string_view ppm, size_t& pos, uint32_t& value) {
  while (pos < ppm.size()) {
    if (std::isspace(static_cast<unsigned char>(ppm[pos]))) {
      ++pos;
    } else if (ppm[pos] == '#') {
      while (pos < ppm.size() && ppm[pos] != '\n') ++pos;
    } else {
      break;
    }
  }
  uint64_t v = 0;
  size_t digits = 0;
  while (pos < ppm.size() && std::isdigit(static_cast<unsigned char>(ppm[pos]))) {
    v = v * 10 + uint64_t(ppm[pos] - '0');
    if (v > 1000000) return false;
    ++pos;
    ++digits;
  }
  value = uint32_t(v);
  return digits > 0;
}

}  // namespace

Result<std::string> PpmToPng(std::string_view ppm) {
  if (!ppm.starts_with("P6")) return MakeError(Code::kInvalid, "screenshot: not a binary PPM (P6)");
  size_t pos = 2;
  uint32_t width = 0, height = 0, maxval = 0;
  if (!ReadNumber(ppm, pos, width) || !ReadNumber(ppm, pos, height) ||
      !ReadNumber(ppm, pos, maxval) || pos >= ppm.size() ||
      !std::isspace(static_cast<unsigned char>(ppm[pos]))) {
    return MakeError(Code::kInvalid, "screenshot: malformed PPM header");
  }
  ++pos;  // the single whitespace before the raster
  if (width == 0 || height == 0 || width > kMaxDimension || height > kMaxDimension) {
    return MakeError(Code::kInvalid, "screenshot: PPM size " + std::to_string(width) + "x" +
                                         std::to_string(height) + " out of range");
  }
  if (maxval == 0 || maxval > 255) {
    return MakeError(Code::kInvalid,
                     "screenshot: PPM maxval " + std::to_string(maxval) + " (want 1..255)");
  }
  const size_t row = size_t(width) * 3;
  if (ppm.size() - pos < row * height) {
    return MakeError(Code::kInvalid, "screenshot: PPM raster is truncated");
  }
  // Raw scanlines, each with filter type 0, samples scaled to 0..255.
  std::string raw;
  raw.reserve((row + 1) * height);
  for (uint32_t y = 0; y < height; ++y) {
    raw.push_back('\0');
    std::string_view line = ppm.substr(pos + y * row, row);
    if (maxval == 255) {
      raw.append(line);
    } else {
      for (char c : line)
        raw.push_back(char(std::min<unsigned>(uint8_t(c), maxval) * 255 / maxval));
    }
  }
  uLongf zlen = compressBound(uLong(raw.size()));
  std::string z(zlen, '\0');
  if (compress2(reinterpret_cast<Bytef*>(z.data()), &zlen,
                reinterpret_cast<const Bytef*>(raw.data()), uLong(raw.size()), 6) != Z_OK) {
    return MakeError(Code::kInternal, "screenshot: zlib compression failed");
  }
  z.resize(zlen);

  std::string png(kPngSignature, 8);
  std::string ihdr;
  PutU32(ihdr, width);
  PutU32(ihdr, height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bit, RGB, deflate, filter 0, no interlace
  PutChunk(png, "IHDR", ihdr);
  PutChunk(png, "IDAT", z);
  PutChunk(png, "IEND", "");
  return png;
}

Result<ImageSize> PngSize(std::string_view png) {
  if (png.size() < 8 + 8 + 13 || png.substr(0, 8) != std::string_view(kPngSignature, 8) ||
      png.substr(12, 4) != "IHDR") {
    return MakeError(Code::kInvalid, "not a PNG");
  }
  return ImageSize{GetU32(png, 16), GetU32(png, 20)};
}

}  // namespace edgevirt::vmm
