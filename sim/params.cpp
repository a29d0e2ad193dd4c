// Validation of kling-o1 and kling-o1-video-to-video-edit bodies. Messages name
// the parameter, what it holds and what is allowed.
#include "sim/params.hpp"

#include <boost/json/serialize.hpp>
#include <fmt/format.h>
#include <initializer_list>
#include <string_view>

namespace klingd::sim {
namespace {
namespace json = boost::json;

bool is_url(const json::value& v) {
    if (!v.is_string())
        return false;
    std::string_view s = v.get_string();
    return (s.starts_with("https://") && s.size() > 8) ||
           (s.starts_with("http://") && s.size() > 7);
}

std::string check_prompt(const json::object& body) {
    auto* p = body.if_contains("prompt");
    if (!p || p->is_null())
        return "prompt is required";
    if (!p->is_string())
        return "prompt must be a string";
    if (p->get_string().empty())
        return "prompt must not be empty";
    return {};
}

// url_list is the name of the parameter; required: absent is an error.
std::string check_url_list(const json::object& body, const char* name, bool required) {
    auto* v = body.if_contains(name);
    if (!v || v->is_null())
        return required ? fmt::format("{} is required", name) : std::string();
    if (!v->is_array())
        return fmt::format("{} must be an array of URL strings", name);
    const auto& a = v->get_array();
    if (required && a.empty())
        return fmt::format("{} must not be empty", name);
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (!is_url(a[i]))
            return fmt::format("{}[{}] must be an http(s) URL string, not {}", name, i,
                               json::serialize(a[i]));
    }
    return {};
}

std::string check_choice(const json::object& body, const char* name,
                         std::initializer_list<std::string_view> allowed) {
    auto* v = body.if_contains(name);
    if (!v || v->is_null())
        return {};
    if (v->is_string()) {
        for (auto a : allowed) {
            if (v->get_string() == a)
                return {};
        }
    }
    std::string list;
    for (auto a : allowed)
        list += fmt::format("{}\"{}\"", list.empty() ? "" : ", ", a);
    return fmt::format("{} must be one of {}, not {}", name, list, json::serialize(*v));
}

std::string check_elements(const json::object& body) {
    auto* v = body.if_contains("elements");
    if (!v || v->is_null())
        return {};
    if (!v->is_array())
        return "elements must be an array of objects";
    const auto& a = v->get_array();
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (!a[i].is_object())
            return fmt::format("elements[{}] must be an object", i);
        const auto& e = a[i].get_object();
        auto* f = e.if_contains("frontal_image_url");
        if (!f || !is_url(*f))
            return fmt::format("elements[{}].frontal_image_url must be an http(s) URL string", i);
        if (auto err = check_url_list(e, "reference_image_urls", false); !err.empty())
            return fmt::format("elements[{}].{}", i, err);
    }
    return {};
}

} // namespace

std::string check_kling_o1(const json::object& body) {
    for (auto err : {check_prompt(body), check_url_list(body, "image_urls", true),
                     check_choice(body, "aspect_ratio", {"auto", "16:9", "9:16", "1:1"}),
                     check_choice(body, "output_format", {"png", "jpg"}),
                     check_choice(body, "resolution", {"1K"})}) {
        if (!err.empty())
            return err;
    }
    return {};
}

std::string check_video_edit(const json::object& body) {
    if (auto err = check_prompt(body); !err.empty())
        return err;
    auto* video = body.if_contains("video_url");
    if (!video || video->is_null())
        return "video_url is required";
    if (!is_url(*video))
        return fmt::format("video_url must be an http(s) URL string, not {}",
                           json::serialize(*video));
    if (auto err = check_url_list(body, "image_urls", false); !err.empty())
        return err;
    if (auto err = check_elements(body); !err.empty())
        return err;
    if (auto* k = body.if_contains("keep_audio"); k && !k->is_null() && !k->is_bool())
        return fmt::format("keep_audio must be a boolean, not {}", json::serialize(*k));
    return {};
}

} // namespace klingd::sim
