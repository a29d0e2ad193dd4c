// Job file parsing and the parameter rules of the two Kling O1 models
// (segmind-v2.md): required fields, types, allowed values, absolute http(s) URLs.
#include "core/job_spec.hpp"

#include "core/json_exact.hpp"
#include "core/url.hpp"
#include "core/utf8.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <fmt/format.h>
#include <variant>

namespace klingd::core {
namespace json = boost::json;

namespace {

// A value quoted for a message, cut short when long.
std::string show(const json::value& v) {
    std::string s = json::serialize(v);
    if (s.size() > 80)
        s = std::string(utf8_prefix(s, 77)) + "...";
    return s;
}

std::string_view kind_of(const json::value& v) {
    switch (v.kind()) {
    case json::kind::null:
        return "null";
    case json::kind::bool_:
        return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
        return "an integer";
    case json::kind::double_:
        return "a number";
    case json::kind::string:
        return "a string";
    case json::kind::array:
        return "an array";
    case json::kind::object:
        return "an object";
    }
    return "a value";
}

bool valid_name_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

struct checker {
    const json::object& params;
    std::optional<std::string> problem;
    std::vector<local_ref>* refs = nullptr; // file:// URLs found, when asked

    bool failed() const { return problem.has_value(); }
    void fail(std::string msg) {
        if (!problem)
            problem = std::move(msg);
    }

    const json::value* field(std::string_view name, bool required) {
        auto it = params.find(name);
        if (it == params.end() || (it->value().is_null() && !required)) {
            if (required)
                fail(fmt::format("params.{} is required", name));
            return nullptr;
        }
        return &it->value();
    }

    void string_field(std::string_view name, bool required) {
        auto v = field(name, required);
        if (!v)
            return;
        if (!v->is_string())
            return fail(fmt::format("params.{} must be a string, found {}", name, kind_of(*v)));
        if (v->as_string().empty() && required)
            return fail(fmt::format("params.{} must not be empty", name));
    }

    void enum_field(std::string_view name, std::initializer_list<std::string_view> allowed) {
        auto v = field(name, false);
        if (!v)
            return;
        std::string list;
        for (auto a : allowed)
            list += fmt::format("{}\"{}\"", list.empty() ? "" : ", ", a);
        if (!v->is_string() || std::find(allowed.begin(), allowed.end(),
                                         std::string_view(v->as_string())) == allowed.end())
            fail(fmt::format("params.{} is {}: allowed values are {}", name, show(*v), list));
    }

    void bool_field(std::string_view name) {
        auto v = field(name, false);
        if (v && !v->is_bool())
            fail(fmt::format("params.{} must be true or false, found {}", name, show(*v)));
    }

    void url_value(const json::value& v, const std::string& where,
                   media_want want = media_want::image) {
        if (!v.is_string())
            return fail(fmt::format("{} must be a URL string, found {}", where, kind_of(v)));
        if (is_file_url(v.as_string())) {
            auto path = file_url_path(v.as_string());
            if (!path)
                return fail(fmt::format("{} {} {}", where, show(v), path.error().detail));
            if (refs)
                refs->push_back({where, std::string(v.as_string()), std::move(*path), want});
            return;
        }
        if (auto u = http_url::parse(v.as_string()); !u)
            fail(fmt::format("{} {} {}", where, show(v), u.error().message()));
    }

    void url_field(std::string_view name, bool required) {
        if (auto v = field(name, required))
            url_value(*v, fmt::format("params.{}", name));
    }

    // Returns the number of URLs, or -1 when absent.
    long url_array(const json::value* v, const std::string& where, bool non_empty) {
        if (!v)
            return -1;
        if (!v->is_array()) {
            fail(fmt::format("{} must be an array of URL strings, found {}", where, kind_of(*v)));
            return -1;
        }
        const auto& a = v->as_array();
        if (non_empty && a.empty())
            fail(fmt::format("{} must hold at least one URL", where));
        for (std::size_t i = 0; i < a.size() && !failed(); ++i)
            url_value(a[i], fmt::format("{}[{}]", where, i));
        return static_cast<long>(a.size());
    }

    void only_known(std::string_view model, std::initializer_list<std::string_view> known) {
        for (auto& kv : params) {
            if (std::find(known.begin(), known.end(), std::string_view(kv.key())) == known.end()) {
                std::string list;
                for (auto k : known)
                    list += fmt::format("{}{}", list.empty() ? "" : ", ", k);
                return fail(fmt::format("params.{} is not a parameter of {} (known: {})",
                                        std::string_view(kv.key()), model, list));
            }
        }
    }
};

// The highest N in "@ImageN" (any case) in the prompt, 0 when there is none.
long highest_image_reference(std::string_view prompt) {
    long highest = 0;
    for (std::size_t at = prompt.find('@'); at != std::string_view::npos;
         at = prompt.find('@', at + 1)) {
        auto word = prompt.substr(at + 1, 5);
        if (word.size() < 5 || !std::equal(word.begin(), word.end(), "image",
                                           [](char a, char b) { return (a | 0x20) == b; }))
            continue;
        long n = 0;
        std::size_t i = at + 6;
        for (; i < prompt.size() && i < at + 10 && prompt[i] >= '0' && prompt[i] <= '9'; ++i)
            n = n * 10 + (prompt[i] - '0');
        if (i > at + 6)
            highest = std::max(highest, n);
    }
    return highest;
}

// The prompt may not name more images than image_urls holds.
void check_image_references(checker& c, const json::object& p, long images,
                            std::string_view spelling) {
    long ref = highest_image_reference(p.at("prompt").as_string());
    if (ref > images)
        c.fail(fmt::format("params.prompt refers to {}{} but params.image_urls has {} URL{}",
                           spelling, ref, images, images == 1 ? "" : "s"));
}

std::optional<std::string> check_kling_o1(const json::object& p, std::vector<local_ref>* refs) {
    checker c{p, {}, refs};
    c.only_known("kling-o1",
                 {"prompt", "image_urls", "aspect_ratio", "output_format", "resolution"});
    c.string_field("prompt", true);
    long images = c.url_array(c.field("image_urls", true), "params.image_urls", true);
    c.enum_field("aspect_ratio", {"auto", "16:9", "9:16", "1:1"});
    c.enum_field("output_format", {"png", "jpg"});
    c.enum_field("resolution", {"1K"});
    if (!c.failed())
        check_image_references(c, p, images, "@Image");
    return c.problem;
}

std::optional<std::string> check_video_edit(const json::object& p, std::vector<local_ref>* refs) {
    checker c{p, {}, refs};
    c.only_known("kling-o1-video-to-video-edit",
                 {"prompt", "video_url", "image_urls", "elements", "keep_audio"});
    c.string_field("prompt", true);
    if (auto v = c.field("video_url", true))
        c.url_value(*v, "params.video_url", media_want::video);
    long images = c.url_array(c.field("image_urls", false), "params.image_urls", false);
    c.bool_field("keep_audio");
    if (auto e = c.field("elements", false); e && !c.failed()) {
        if (!e->is_array())
            return fmt::format(
                "params.elements must be an array of objects "
                "{{\"frontal_image_url\": URL, \"reference_image_urls\": [URL, ...]}}, found {}",
                kind_of(*e));
        const auto& a = e->as_array();
        for (std::size_t i = 0; i < a.size() && !c.failed(); ++i) {
            std::string where = fmt::format("params.elements[{}]", i);
            if (!a[i].is_object()) {
                c.fail(fmt::format(
                    "{} must be an object with frontal_image_url and reference_image_urls", where));
                break;
            }
            const auto& el = a[i].as_object();
            for (auto& kv : el)
                if (kv.key() != "frontal_image_url" && kv.key() != "reference_image_urls")
                    c.fail(fmt::format(
                        "{}.{} is not known (known: frontal_image_url, reference_image_urls)",
                        where, std::string_view(kv.key())));
            auto f = el.find("frontal_image_url");
            if (f == el.end())
                c.fail(fmt::format("{}.frontal_image_url is required", where));
            else
                c.url_value(f->value(), where + ".frontal_image_url");
            auto r = el.find("reference_image_urls");
            if (r != el.end())
                c.url_array(&r->value(), where + ".reference_image_urls", false);
        }
    }
    if (!c.failed() && images >= 0)
        check_image_references(c, p, images, "@image");
    return c.problem;
}

// The path of the first number in v that is not finite ("params.a[2]"), or nullopt.
// Boost.JSON reads 1e400 as infinity (and 0e400 as NaN) and would write them back
// as Infinity and NaN, which are not JSON.
std::optional<std::string> non_finite_number(const json::value& v, const std::string& path) {
    if (v.is_double())
        return std::isfinite(v.as_double()) ? std::nullopt : std::optional<std::string>(path);
    if (v.is_array()) {
        const auto& a = v.as_array();
        for (std::size_t i = 0; i < a.size(); ++i)
            if (auto p = non_finite_number(a[i], fmt::format("{}[{}]", path, i)))
                return p;
    } else if (v.is_object()) {
        for (auto& kv : v.as_object())
            if (auto p = non_finite_number(kv.value(),
                                           fmt::format("{}.{}", path, utf8_prefix(kv.key(), 80))))
                return p;
    }
    return std::nullopt;
}

void canonical_into(const json::value& v, std::string& out) {
    if (v.is_object()) {
        const auto& o = v.as_object();
        std::vector<const json::key_value_pair*> kvs;
        for (auto& kv : o)
            kvs.push_back(&kv);
        std::sort(kvs.begin(), kvs.end(), [](auto* a, auto* b) { return a->key() < b->key(); });
        out += '{';
        for (std::size_t i = 0; i < kvs.size(); ++i) {
            if (i)
                out += ',';
            out += json::serialize(json::string(kvs[i]->key()));
            out += ':';
            canonical_into(kvs[i]->value(), out);
        }
        out += '}';
    } else if (v.is_array()) {
        out += '[';
        bool first = true;
        for (auto& e : v.as_array()) {
            if (!first)
                out += ',';
            first = false;
            canonical_into(e, out);
        }
        out += ']';
    } else {
        out += json::serialize(v);
    }
}

} // namespace

std::string canonical_json(const json::value& v) {
    std::string out;
    canonical_into(v, out);
    return out;
}

std::optional<std::string> job_id_problem(std::string_view id) {
    if (id.empty())
        return "is empty";
    if (id.size() > 128)
        return fmt::format("is {} characters long; at most 128 are allowed", id.size());
    if (id.front() == '.')
        return "starts with '.'";
    for (char c : id)
        if (!valid_name_char(c))
            return "may contain only letters, digits, '.', '_' and '-'";
    return std::nullopt;
}

namespace {

// Any other model: every string that is a file:// URL, wherever it is, may be an image
// or a video.
std::optional<std::string> generic_file_urls(const json::value& v, const std::string& where,
                                             std::vector<local_ref>* refs) {
    if (v.is_string() && is_file_url(v.as_string())) {
        auto path = file_url_path(v.as_string());
        if (!path)
            return fmt::format("{} {} {}", where, show(v), path.error().detail);
        if (refs)
            refs->push_back({where, std::string(v.as_string()), std::move(*path), media_want::any});
    } else if (v.is_array()) {
        const auto& a = v.as_array();
        for (std::size_t i = 0; i < a.size(); ++i)
            if (auto p = generic_file_urls(a[i], fmt::format("{}[{}]", where, i), refs))
                return p;
    } else if (v.is_object()) {
        for (auto& kv : v.as_object())
            if (auto p = generic_file_urls(
                    kv.value(), fmt::format("{}.{}", where, utf8_prefix(kv.key(), 80)), refs))
                return p;
    }
    return std::nullopt;
}

} // namespace

std::optional<std::string> model_params_problem(std::string_view model, const json::object& params,
                                                std::vector<local_ref>* refs) {
    if (model == "kling-o1")
        return check_kling_o1(params, refs);
    if (model == "kling-o1-video-to-video-edit")
        return check_video_edit(params, refs);
    return generic_file_urls(params, "params", refs);
}

std::vector<local_ref> local_refs(std::string_view model, std::string_view params) {
    std::vector<local_ref> refs;
    // Most jobs have none: a string that starts with "file:" is looked for first.
    bool maybe = false;
    for (std::size_t at = params.find('"'); at != std::string_view::npos && !maybe;
         at = params.find('"', at + 1))
        maybe = is_file_url(params.substr(at + 1, 5));
    if (!maybe)
        return refs;
    boost::system::error_code ec;
    auto v = json::parse(params, ec);
    if (ec || !v.is_object())
        return refs;
    model_params_problem(model, v.as_object(), &refs);
    return refs;
}

namespace {

// The job text as a JSON object of known fields, or why not.
std::variant<json::value, std::string> parse_root(std::string_view text) {
    if (text.empty())
        return std::string(
            "the job is empty: expected a JSON object {\"model\": ..., \"params\": {...}}");
    if (text.find('\0') != std::string_view::npos)
        return fmt::format("the job contains a NUL byte at offset {}: not a JSON text",
                           text.find('\0'));
    json::parse_options opts;
    opts.max_depth = 32;
    boost::system::error_code ec;
    std::size_t n = 0; // where the parser stopped: the error's place
    json::value root = parse_json_exact(text, opts, ec, n);
    if (ec) {
        std::size_t line = 1 + std::count(text.begin(), text.begin() + static_cast<long>(n), '\n');
        return fmt::format("not valid JSON (line {}, byte {}): {}", line, n, ec.message());
    }
    if (!root.is_object())
        return fmt::format("the job must be a JSON object, found {}", kind_of(root));
    for (auto& kv : root.as_object()) {
        auto k = std::string_view(kv.key());
        if (k != "model" && k != "params" && k != "id" && k != "priority")
            return fmt::format("unknown field \"{}\" (allowed: model, params, id, priority)", k);
    }
    return root;
}

std::optional<std::string> read_model_and_params(const json::object& o, job_spec& spec) {
    auto m = o.find("model");
    if (m == o.end())
        return "model is required (e.g. \"kling-o1\")";
    if (!m->value().is_string())
        return fmt::format("model must be a string, found {}", kind_of(m->value()));
    spec.model = m->value().as_string();
    if (auto p = job_id_problem(spec.model))
        return fmt::format("model {} is not a model slug: it {}", show(m->value()), *p);
    auto pa = o.find("params");
    if (pa == o.end())
        return "params is required: an object with the model's parameters";
    if (!pa->value().is_object())
        return fmt::format("params must be an object, found {}", kind_of(pa->value()));
    if (auto p = non_finite_number(pa->value(), "params"))
        return fmt::format("{} is a number beyond the range of a double (about 1.8e308)", *p);
    if (auto p = model_params_problem(spec.model, pa->value().as_object(), &spec.local_inputs))
        return p;
    spec.params = canonical_json(pa->value());
    return std::nullopt;
}

std::optional<std::string> read_id(const json::object& o, std::string_view default_id,
                                   job_spec& spec) {
    if (auto id = o.find("id"); id != o.end()) {
        if (!id->value().is_string())
            return fmt::format("id must be a string, found {}", kind_of(id->value()));
        spec.id = id->value().as_string();
        if (auto p = job_id_problem(spec.id))
            return fmt::format("id {} {}", show(id->value()), *p);
        return std::nullopt;
    }
    spec.id = default_id;
    if (spec.id.empty())
        return "id is required here (there is no file name to take it from)";
    if (auto p = job_id_problem(spec.id))
        return fmt::format("the file name gives the job id \"{}\", which {}; add an \"id\" field",
                           spec.id.substr(0, 140), *p);
    return std::nullopt;
}

std::optional<std::string> read_priority(const json::object& o, job_spec& spec) {
    auto pr = o.find("priority");
    if (pr == o.end())
        return std::nullopt;
    const auto& v = pr->value();
    std::int64_t n;
    if (v.is_int64())
        n = v.as_int64();
    else if (v.is_uint64() && v.as_uint64() <= 1000000)
        n = static_cast<std::int64_t>(v.as_uint64());
    else if (v.is_uint64())
        n = 1000001;
    else
        return fmt::format("priority must be an integer, found {}", show(v));
    if (n < -1000000 || n > 1000000)
        return fmt::format("priority {} is out of range: from -1000000 to 1000000", show(v));
    spec.priority = static_cast<int>(n);
    return std::nullopt;
}

} // namespace

result<job_spec> parse_job_spec(std::string_view text, std::string_view default_id) {
    auto root = parse_root(text);
    if (auto* why = std::get_if<std::string>(&root))
        return error(errc::invalid_job, std::move(*why));
    const auto& o = std::get<json::value>(root).as_object();
    job_spec spec;
    for (auto problem :
         {read_model_and_params(o, spec), read_id(o, default_id, spec), read_priority(o, spec)})
        if (problem)
            return error(errc::invalid_job, std::move(*problem));
    return spec;
}

} // namespace klingd::core
