// A strict UTF-8 decoder (RFC 3629 table of well-formed byte sequences).
#include "core/utf8.hpp"

namespace klingd::core {

namespace {

// Length of the well-formed sequence at s[i], or 0 when the bytes there are not one.
std::size_t sequence_at(std::string_view s, std::size_t i) {
    auto b = [&](std::size_t k) {
        return static_cast<unsigned char>(s[i + k]);
    };
    auto in = [](unsigned char c, unsigned char lo, unsigned char hi) {
        return c >= lo && c <= hi;
    };
    std::size_t left = s.size() - i;
    unsigned char c = b(0);
    if (c < 0x80)
        return 1;
    if (in(c, 0xC2, 0xDF))
        return left >= 2 && in(b(1), 0x80, 0xBF) ? 2 : 0;
    if (in(c, 0xE0, 0xEF)) {
        if (left < 3)
            return 0;
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80; // no overlong forms
        unsigned char hi = c == 0xED ? 0x9F : 0xBF; // no surrogates
        return in(b(1), lo, hi) && in(b(2), 0x80, 0xBF) ? 3 : 0;
    }
    if (in(c, 0xF0, 0xF4)) {
        if (left < 4)
            return 0;
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80; // no overlong forms
        unsigned char hi = c == 0xF4 ? 0x8F : 0xBF; // nothing above U+10FFFF
        return in(b(1), lo, hi) && in(b(2), 0x80, 0xBF) && in(b(3), 0x80, 0xBF) ? 4 : 0;
    }
    return 0;
}

} // namespace

std::string valid_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        std::size_t n = sequence_at(s, i);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            ++i;
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    return out;
}

std::string_view utf8_prefix(std::string_view s, std::size_t max_bytes) {
    if (s.size() <= max_bytes)
        return s;
    std::size_t end = max_bytes;
    // Back up over continuation bytes (10xxxxxx) to the start of the cut sequence.
    std::size_t back = 0;
    while (end > 0 && back < 3 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) {
        --end;
        ++back;
    }
    return s.substr(0, end);
}

} // namespace klingd::core
