// Deterministic media content: a format signature, then splitmix64 output
// indexed by position.
#include "sim/media.hpp"

#include <algorithm>

namespace klingd::sim {
namespace {

constexpr std::string_view png_head{"\x89PNG\r\n\x1a\n", 8};
constexpr std::string_view jpg_head{"\xff\xd8\xff\xe0\x00\x10JFIF\x00", 11};
constexpr std::string_view mp4_head{"\x00\x00\x00\x18"
                                    "ftypmp42\x00\x00\x00\x00mp42isom",
                                    24};

std::string_view head(media_kind k) {
    switch (k) {
    case media_kind::png:
        return png_head;
    case media_kind::jpg:
        return jpg_head;
    case media_kind::mp4:
        return mp4_head;
    }
    return png_head;
}

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

} // namespace

std::string_view extension(media_kind k) {
    switch (k) {
    case media_kind::png:
        return "png";
    case media_kind::jpg:
        return "jpg";
    case media_kind::mp4:
        return "mp4";
    }
    return "png";
}

std::string_view content_type(media_kind k) {
    switch (k) {
    case media_kind::png:
        return "image/png";
    case media_kind::jpg:
        return "image/jpeg";
    case media_kind::mp4:
        return "video/mp4";
    }
    return "application/octet-stream";
}

std::uint64_t media_seed(std::string_view request_id) {
    std::uint64_t h = 0xcbf29ce484222325ULL; // FNV-1a
    for (unsigned char c : request_id)
        h = (h ^ c) * 0x100000001b3ULL;
    return h;
}

void fill_media(const media_file& file, std::uint64_t offset, std::span<char> out) {
    auto h = head(file.kind);
    std::size_t i = 0;
    while (i < out.size() && offset + i < h.size()) {
        out[i] = h[offset + i];
        ++i;
    }
    while (i < out.size()) {
        std::uint64_t pos = offset + i;
        std::uint64_t word = splitmix64(file.seed ^ (pos / 8) * 0xd6e8feb86659fd93ULL);
        for (std::uint64_t b = pos % 8; b < 8 && i < out.size(); ++b, ++i)
            out[i] = static_cast<char>(word >> (8 * b));
    }
}

} // namespace klingd::sim
