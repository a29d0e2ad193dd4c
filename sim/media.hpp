// The media a completed request points to: deterministic bytes derived from the
// request id, so a test can check a download byte for byte. Each file starts
// with its format's signature (PNG, JPEG SOI, an MP4 ftyp box), then
// pseudo-random bytes. Any range can be made on its own, so large files stream.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace klingd::sim {

enum class media_kind { png, jpg, mp4 };

struct media_file {
    media_kind kind = media_kind::png;
    std::uint64_t seed = 0;
    std::uint64_t size = 0;
};

std::string_view extension(media_kind k);
std::string_view content_type(media_kind k);
std::uint64_t media_seed(std::string_view request_id);

// Writes the bytes [offset, offset + out.size()) of the file into out.
void fill_media(const media_file& file, std::uint64_t offset, std::span<char> out);

} // namespace klingd::sim
