// OpenSSL's digest and decoder, for tests.
#include "tests/support/digest.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>

namespace klingd::test {

std::string sha256_hex(const std::string& data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
    std::string out;
    for (unsigned i = 0; i < n; ++i)
        out += fmt::format("{:02x}", md[i]);
    return out;
}

std::string base64_decode(const std::string& b64) {
    std::string out(b64.size(), '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(b64.data()),
                            static_cast<int>(b64.size()));
    if (n < 0)
        return {};
    std::size_t pad = b64.ends_with("==") ? 2 : b64.ends_with('=') ? 1 : 0;
    out.resize(static_cast<std::size_t>(n) - pad);
    return out;
}

} // namespace klingd::test
