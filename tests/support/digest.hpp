// Small helpers the tests share to check bytes: a SHA-256 in hex, base64 decoded.
#pragma once

#include <string>

namespace klingd::test {

std::string sha256_hex(const std::string& data);
// Standard base64 with its padding; the decoded bytes (padding not counted).
std::string base64_decode(const std::string& b64);

} // namespace klingd::test
