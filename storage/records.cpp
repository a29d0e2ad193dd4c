// The stored form of a job's outputs, shared by the backends.
#include "storage/records.hpp"

#include <boost/json.hpp>

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

} // namespace klingd::storage
