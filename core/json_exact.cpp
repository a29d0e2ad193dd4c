// Boost.JSON's basic_parser with a handler of our own: the value_stack builds the
// value as Boost's parser does, and doubles are read again from their text.
#include "core/json_exact.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/error.hpp>
#include <boost/json/value_stack.hpp>
#include <charconv>
#include <string>

namespace klingd::core {

namespace json = boost::json;
using boost::system::error_code;

namespace {

struct exact_handler {
    static constexpr std::size_t max_object_size = json::object::max_size();
    static constexpr std::size_t max_array_size = json::array::max_size();
    static constexpr std::size_t max_key_size = json::string::max_size();
    static constexpr std::size_t max_string_size = json::string::max_size();

    json::value_stack st;
    std::string number; // the text of the number being read, when it comes in parts

    bool on_document_begin(error_code&) { return true; }
    bool on_document_end(error_code&) { return true; }
    bool on_object_begin(error_code&) { return true; }
    bool on_object_end(std::size_t n, error_code&) {
        st.push_object(n);
        return true;
    }
    bool on_array_begin(error_code&) { return true; }
    bool on_array_end(std::size_t n, error_code&) {
        st.push_array(n);
        return true;
    }
    bool on_key_part(json::string_view s, std::size_t, error_code&) {
        st.push_chars(s);
        return true;
    }
    bool on_key(json::string_view s, std::size_t, error_code&) {
        st.push_key(s);
        return true;
    }
    bool on_string_part(json::string_view s, std::size_t, error_code&) {
        st.push_chars(s);
        return true;
    }
    bool on_string(json::string_view s, std::size_t, error_code&) {
        st.push_string(s);
        return true;
    }
    bool on_number_part(json::string_view s, error_code&) {
        number.append(s.data(), s.size());
        return true;
    }
    bool on_int64(std::int64_t i, json::string_view, error_code&) {
        number.clear();
        st.push_int64(i);
        return true;
    }
    bool on_uint64(std::uint64_t u, json::string_view, error_code&) {
        number.clear();
        st.push_uint64(u);
        return true;
    }
    bool on_double(double d, json::string_view s, error_code&) {
        number.append(s.data(), s.size());
        double exact = 0;
        auto [end, err] = std::from_chars(number.data(), number.data() + number.size(), exact);
        // Out of range: keep Boost's reading (infinity, 0 or NaN) for the caller to judge.
        if (err == std::errc() && end == number.data() + number.size())
            d = exact;
        number.clear();
        st.push_double(d);
        return true;
    }
    bool on_bool(bool b, error_code&) {
        st.push_bool(b);
        return true;
    }
    bool on_null(error_code&) {
        st.push_null();
        return true;
    }
    bool on_comment_part(json::string_view, error_code&) { return true; }
    bool on_comment(json::string_view, error_code&) { return true; }
};

} // namespace

json::value parse_json_exact(std::string_view text, const json::parse_options& opts, error_code& ec,
                             std::size_t& consumed) {
    json::basic_parser<exact_handler> p(opts);
    p.handler().st.reset();
    consumed = p.write_some(false, text.data(), text.size(), ec);
    if (!ec && consumed < text.size())
        ec = json::error::extra_data; // as json::parse: one value, then only white space
    if (ec)
        return nullptr;
    return p.handler().st.release();
}

} // namespace klingd::core
