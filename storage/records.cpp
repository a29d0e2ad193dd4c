// The stored form of a job's outputs, shared by the backends.
#include "storage/records.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <openssl/evp.h>

namespace klingd::storage {

namespace json = boost::json;

std::string outputs_json(const std::vector<std::string>& outputs) {
    json::array a;
    for (auto& o : outputs)
        a.emplace_back(o);
    return json::serialize(a);
}

std::vector<std::string> parse_outputs(const std::string& text) {
    std::vector<std::string> out;
    boost::system::error_code ec;
    auto v = json::parse(text, ec);
    if (!ec && v.is_array())
        for (auto& e : v.as_array())
            if (e.is_string())
                out.emplace_back(e.as_string());
    return out;
}

std::string content_digest(const std::string& model, const std::string& params,
                           std::int64_t priority) {
    // Lengths first: no two contents make the same bytes.
    std::string bytes =
        fmt::format("{}:{}:{}:{}:{}", model.size(), model, params.size(), params, priority);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
    std::string hex;
    for (unsigned int i = 0; i < n; ++i)
        hex += fmt::format("{:02x}", md[i]);
    return hex;
}

} // namespace klingd::storage
