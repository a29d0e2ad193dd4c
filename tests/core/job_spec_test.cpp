// Job files: what is accepted, and that each rejection names field, value and what is allowed.
#include "core/job_spec.hpp"
#include "core/utf8.hpp"

#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace {

using klingd::core::parse_job_spec;

const std::string good_image =
    R"({"model":"kling-o1","params":{"prompt":"Merge @Image1 into @Image2","image_urls":["https://a.example/1.png","http://b.example/2.jpg"]}})";
const std::string good_video =
    R"({"model":"kling-o1-video-to-video-edit","id":"vid-1","priority":5,
        "params":{"prompt":"swap @Element1 using @image1","video_url":"https://v.example/in.mp4",
                  "image_urls":["https://i.example/a.png"],"keep_audio":true,
                  "elements":[{"frontal_image_url":"https://i.example/f.png","reference_image_urls":["https://i.example/r.png"]}]}})";

TEST(job_spec, accepts_a_kling_o1_job_and_takes_the_id_from_the_file_name) {
    auto r = parse_job_spec(good_image, "from-file");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->id, "from-file");
    EXPECT_EQ(r->model, "kling-o1");
    EXPECT_EQ(r->priority, 0);
}

TEST(job_spec, accepts_a_video_edit_job_with_elements) {
    auto r = parse_job_spec(good_video, "ignored");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->id, "vid-1");
    EXPECT_EQ(r->priority, 5);
}

TEST(job_spec, other_models_pass_through_unchecked) {
    auto r = parse_job_spec(R"({"model":"flux-schnell","params":{"anything":[1,2,3]}})", "x");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->params, R"({"anything":[1,2,3]})");
}

TEST(job_spec, params_are_canonical_so_key_order_does_not_matter) {
    auto a = parse_job_spec(R"({"model":"m","params":{"b":1,"a":{"d":2,"c":3}}})", "x");
    auto b = parse_job_spec(R"({"params":{"a":{"c":3,"d":2},"b":1},"model":"m"})", "x");
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->params, b->params);
    EXPECT_EQ(a->params, R"({"a":{"c":3,"d":2},"b":1})");
}

TEST(job_spec, explicit_nulls_for_optional_params_are_allowed) {
    auto r = parse_job_spec(
        R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"https://v/x.mp4","elements":null}})",
        "x");
    EXPECT_TRUE(r) << r.error().message();
}

struct bad {
    const char* name;
    std::string text;
    std::string default_id;
    const char* expect;
};
void PrintTo(const bad& b, std::ostream* os) {
    *os << b.name;
}

class job_spec_rejects : public ::testing::TestWithParam<bad> {};

TEST_P(job_spec_rejects, with_a_message_naming_the_problem) {
    const auto& b = GetParam();
    auto r = parse_job_spec(b.text, b.default_id);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), klingd::core::errc::invalid_job);
    EXPECT_NE(r.error().message().find(b.expect), std::string::npos)
        << "error was: " << r.error().message();
    EXPECT_EQ(r.error().message().find('\n'), std::string::npos) << "the .error file is one line";
}

std::string image_with(const std::string& params) {
    return R"({"model":"kling-o1","params":)" + params + "}";
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(all, job_spec_rejects, ::testing::Values(
    bad{"empty", "", "x", "the job is empty"},
    bad{"invalid_json", "{\"model\": \"kling-o1\",\n \"params\": {", "x", "not valid JSON (line 2"},
    bad{"trailing_garbage", good_image + "xx", "x", "not valid JSON"},
    bad{"not_an_object", "[1,2]", "x", "must be a JSON object, found an array"},
    bad{"number_beyond_double", R"({"model":"flux","params":{"g":{"a":[1,1e400]}}})", "x", "params.g.a[1] is a number beyond the range of a double"},
    bad{"number_beyond_double_negative", R"({"model":"flux","params":{"seed":-2e308}})", "x", "params.seed is a number beyond"},
    bad{"nul_byte", std::string("{\"model\"\0:1}", 12), "x", "NUL byte at offset 8"},
    bad{"binary_garbage", std::string("\x89PNG\r\n\x1a\n\xff\xfe", 10), "x", "not valid JSON"},
    bad{"deep_nesting", std::string(100, '[') + std::string(100, ']'), "x", "not valid JSON"},
    bad{"missing_model", R"({"params":{}})", "x", "model is required"},
    bad{"model_not_string", R"({"model":7,"params":{}})", "x", "model must be a string, found an integer"},
    bad{"model_with_slash", R"({"model":"../admin","params":{}})", "x", "is not a model slug"},
    bad{"missing_params", R"({"model":"kling-o1"})", "x", "params is required"},
    bad{"params_not_object", R"({"model":"kling-o1","params":"p"})", "x", "params must be an object, found a string"},
    bad{"unknown_field", R"({"model":"m","params":{},"prio":1})", "x", "unknown field \"prio\""},
    bad{"id_dotdot", R"({"model":"m","params":{},"id":"../etc"})", "x", "id \"../etc\" starts with '.'"},
    bad{"id_inner_dotdot_slash", R"({"model":"m","params":{},"id":"a/../b"})", "x", "may contain only letters"},
    bad{"id_leading_dot", R"({"model":"m","params":{},"id":".hidden"})", "x", "starts with '.'"},
    bad{"id_slash", R"({"model":"m","params":{},"id":"a/b"})", "x", "may contain only letters"},
    bad{"id_too_long", R"({"model":"m","params":{},"id":")" + std::string(129, 'a') + R"("})", "x", "at most 128"},
    bad{"id_not_string", R"({"model":"m","params":{},"id":5})", "x", "id must be a string"},
    bad{"bad_file_name_id", R"({"model":"m","params":{}})", "my job", "the file name gives the job id \"my job\""},
    bad{"no_id_anywhere", R"({"model":"m","params":{}})", "", "id is required here"},
    bad{"priority_float", R"({"model":"m","params":{},"priority":1.5})", "x", "priority must be an integer, found 1.5E0"},
    bad{"priority_string", R"({"model":"m","params":{},"priority":"1"})", "x", "priority must be an integer"},
    bad{"priority_huge", R"({"model":"m","params":{},"priority":99999999999})", "x", "out of range"},
    bad{"priority_huge_unsigned", R"({"model":"m","params":{},"priority":18446744073709551615})", "x", "out of range"},
    bad{"image_missing_prompt", image_with(R"({"image_urls":["https://x/a.png"]})"), "x", "params.prompt is required"},
    bad{"image_prompt_not_string", image_with(R"({"prompt":3,"image_urls":["https://x/a.png"]})"), "x", "params.prompt must be a string, found an integer"},
    bad{"image_empty_prompt", image_with(R"({"prompt":"","image_urls":["https://x/a.png"]})"), "x", "params.prompt must not be empty"},
    bad{"image_missing_urls", image_with(R"({"prompt":"p"})"), "x", "params.image_urls is required"},
    bad{"image_urls_not_array", image_with(R"({"prompt":"p","image_urls":"https://x/a.png"})"), "x", "params.image_urls must be an array of URL strings, found a string"},
    bad{"image_urls_empty", image_with(R"({"prompt":"p","image_urls":[]})"), "x", "at least one URL"},
    bad{"image_url_not_url", image_with(R"({"prompt":"p","image_urls":["https://x/a.png","not a url"]})"), "x", "params.image_urls[1] \"not a url\" is not an absolute http"},
    bad{"image_url_ftp", image_with(R"({"prompt":"p","image_urls":["ftp://x/a.png"]})"), "x", "is not an absolute http:// or https:// URL"},
    bad{"image_url_file_other_host", image_with(R"({"prompt":"p","image_urls":["file://db.example/etc/passwd"]})"), "x", "names another host: only local files"},
    bad{"image_url_file_dot_dot", image_with(R"({"prompt":"p","image_urls":["file:///srv/media/../../etc/passwd"]})"), "x", "must not hold \".\", \"..\" or empty path segments"},
    bad{"image_url_file_encoded_dot_dot", image_with(R"({"prompt":"p","image_urls":["file:///srv/media/%2e%2e/x.png"]})"), "x", "must not hold \".\", \"..\""},
    bad{"image_url_file_relative", image_with(R"({"prompt":"p","image_urls":["file:x.png"]})"), "x", "file://"},
    bad{"image_url_no_host", image_with(R"({"prompt":"p","image_urls":["https:///a.png"]})"), "x", "has no host"},
    bad{"image_url_space", image_with(R"({"prompt":"p","image_urls":["https://x/a b.png"]})"), "x", "contains a space"},
    bad{"image_url_number", image_with(R"({"prompt":"p","image_urls":[42]})"), "x", "params.image_urls[0] must be a URL string, found an integer"},
    bad{"aspect_ratio", image_with(R"({"prompt":"p","image_urls":["https://x/a"],"aspect_ratio":"4:3"})"), "x", "params.aspect_ratio is \"4:3\": allowed values are \"auto\", \"16:9\", \"9:16\", \"1:1\""},
    bad{"output_format", image_with(R"({"prompt":"p","image_urls":["https://x/a"],"output_format":"gif"})"), "x", "params.output_format is \"gif\": allowed values are \"png\", \"jpg\""},
    bad{"resolution", image_with(R"({"prompt":"p","image_urls":["https://x/a"],"resolution":"2K"})"), "x", "allowed values are \"1K\""},
    bad{"unknown_param", image_with(R"({"prompt":"p","image_urls":["https://x/a"],"seed":1})"), "x", "params.seed is not a parameter of kling-o1"},
    bad{"image_ref_beyond_urls", image_with(R"({"prompt":"put @Image3 there","image_urls":["https://x/a","https://x/b"]})"), "x", "refers to @Image3 but params.image_urls has 2 URLs"},
    bad{"video_missing_url", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p"}})", "x", "params.video_url is required"},
    bad{"video_url_bad", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"video.mp4"}})", "x", "params.video_url \"video.mp4\" is not an absolute"},
    bad{"video_keep_audio", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"https://v/x","keep_audio":"yes"}})", "x", "params.keep_audio must be true or false"},
    bad{"video_elements_string", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"https://v/x","elements":"e"}})", "x", "params.elements must be an array"},
    bad{"video_element_no_frontal", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"https://v/x","elements":[{"reference_image_urls":[]}]}})", "x", "params.elements[0].frontal_image_url is required"},
    bad{"video_element_bad_ref", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"https://v/x","elements":[{"frontal_image_url":"https://i/f","reference_image_urls":["x"]}]}})", "x", "params.elements[0].reference_image_urls[0] \"x\" is not an absolute"},
    bad{"video_unknown_param", R"({"model":"kling-o1-video-to-video-edit","params":{"prompt":"p","video_url":"https://v/x","aspect_ratio":"1:1"}})", "x", "params.aspect_ratio is not a parameter of kling-o1-video-to-video-edit"}
), [](const auto& info) { return std::string(info.param.name); });
// clang-format on

TEST(job_spec, id_rules) {
    using klingd::core::job_id_problem;
    EXPECT_FALSE(job_id_problem("abc-1.2_3"));
    EXPECT_FALSE(job_id_problem(std::string(128, 'a')));
    EXPECT_TRUE(job_id_problem(""));
    EXPECT_TRUE(job_id_problem("."));
    EXPECT_TRUE(job_id_problem(".."));
    EXPECT_TRUE(job_id_problem("a\nb"));
    EXPECT_TRUE(job_id_problem("é"));
}

TEST(job_spec, numbers_are_read_exactly_and_written_back_as_read) {
    // Boost.JSON 1.81 alone reads these a unit in the last place off (fuzz findings).
    auto r = parse_job_spec(
        R"({"model":"flux","params":{"x":38888888888888888888888888888888888888888888888888888888888888888888888888888888888888888.5,"z":0e400,"y":0.1}})",
        "n");
    ASSERT_TRUE(r) << r.error().message();
    // The correctly rounded double of x (as Python's float() reads it), 0e400 as 0.
    EXPECT_EQ(r->params, R"({"x":3.8888888888888886E88,"y":1E-1,"z":0E0})");
    // The premise: Boost.JSON's own parser reads x differently.
    auto boost_x = boost::json::parse("388888888888888888888888888888888888888888888888888888888888"
                                      "88888888888888888888888888888.5");
    EXPECT_NE(boost::json::serialize(boost_x), "3.8888888888888886E88");
    auto again = parse_job_spec(R"({"model":"flux","params":)" + r->params + "}", "n");
    ASSERT_TRUE(again) << again.error().message();
    EXPECT_EQ(again->params, r->params);
}

TEST(job_spec, a_long_value_quoted_in_a_message_is_cut_between_characters) {
    std::string value;
    for (int i = 0; i < 60; ++i)
        value += "\xC3\xA9"; // é: its 2 bytes must not be parted at the cut
    auto r = parse_job_spec(
        R"({"model":"kling-o1","params":{"prompt":"p","image_urls":["https://e/a"],"aspect_ratio":"a)" +
            value + R"("}})",
        "x");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("..."), std::string::npos) << r.error().message();
    EXPECT_EQ(klingd::core::valid_utf8(r.error().message()), r.error().message())
        << r.error().message();
}

} // namespace
