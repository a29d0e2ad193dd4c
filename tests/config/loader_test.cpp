// Tests of the configuration loader: defaults, every key, each kind of bad value
// (named by key and line), the API key search order, redaction, and the real
// `klingd --check-config` program.
#include "config/loader.hpp"
#include "core/money.hpp"
#include "tests/support/child_process.hpp"

#include <filesystem>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

using klingd::config::env_lookup;
using klingd::config::load_result;
using klingd::config::parse_settings;

const std::string file = "/etc/klingd/klingd.toml";

env_lookup env_with(std::map<std::string, std::string> vars) {
    return [vars](const std::string& n) -> std::optional<std::string> {
        auto it = vars.find(n);
        if (it == vars.end())
            return std::nullopt;
        return it->second;
    };
}

const env_lookup with_key = env_with({{"SEGMIND_API_KEY", "sk-test-0123456789"}});

load_result parse(const std::string& text, const env_lookup& env = with_key) {
    return parse_settings(text, file, env);
}

// The one error the text produces; fails the test when there is not exactly one.
std::string only_error(const std::string& text) {
    auto r = parse(text);
    EXPECT_FALSE(r.value.has_value());
    EXPECT_EQ(r.errors.size(), 1u) << (r.errors.empty() ? std::string("no errors") : r.errors[0]);
    return r.errors.empty() ? std::string() : r.errors[0];
}

TEST(config_defaults, empty_file_gives_contract_defaults) {
    auto r = parse("");
    ASSERT_TRUE(r.value) << r.errors.at(0);
    const auto& s = *r.value;
    EXPECT_EQ(s.api.base_url, "https://api.segmind.com");
    EXPECT_EQ(s.api.host, "api.segmind.com");
    EXPECT_EQ(s.api.port, 443);
    EXPECT_EQ(s.api.requests_per_minute, 60);
    EXPECT_EQ(s.api.max_connections, 0) << "automatic";
    EXPECT_EQ(s.api.max_submits_in_flight, 0) << "automatic";
    EXPECT_EQ(s.jobs.max_in_flight, 0) << "automatic";
    EXPECT_EQ(s.api.request_timeout_s, 30);
    EXPECT_EQ(s.storage.database, "/var/lib/klingd/klingd.db");
    EXPECT_EQ(s.spool.directory, "/var/spool/klingd");
    EXPECT_EQ(s.spool.max_file_bytes, 1u << 20);
    EXPECT_EQ(s.output.directory, "/var/lib/klingd/output");
    EXPECT_EQ(s.control.socket, "/run/klingd/klingd.sock");
    EXPECT_EQ(s.control.socket_mode, 0660u);
    EXPECT_EQ(s.jobs.result_retention_s, 3600);
    EXPECT_EQ(s.jobs.min_poll_interval_s, 1);
    EXPECT_EQ(s.jobs.max_poll_interval_s, 60);
    EXPECT_FALSE(s.jobs.resubmit_unknown);
    EXPECT_EQ(s.models.at("kling-o1").expected_duration_s, 58);
    EXPECT_EQ(s.models.at("kling-o1-video-to-video-edit").expected_duration_s, 223);
    EXPECT_EQ(s.log_level, "info");
}

TEST(config_values, every_key_is_read) {
    auto r = parse(R"(
log_level = "debug"
[api]
base_url = "http://127.0.0.1:8443"
ca_file = "/tmp/ca.pem"
requests_per_minute = 300.5
max_connections = 8
max_submits_in_flight = 3
request_timeout_s = 2.5
max_result_bytes = 65536
[storage]
database = "db/klingd.db"
[spool]
directory = "/srv/spool"
max_file_bytes = 4096
[output]
directory = "/srv/out"
max_download_bytes = 1048576
[control]
socket = "/tmp/k.sock"
socket_mode = "0600"
[jobs]
max_in_flight = 100000
result_retention_s = 36
min_poll_interval_s = 0.1
max_poll_interval_s = 6
resubmit_unknown = true
[models."kling-o1"]
expected_duration_s = 0.58
[models."other-model"]
expected_duration_s = 10
)");
    ASSERT_TRUE(r.value) << r.errors.at(0);
    const auto& s = *r.value;
    EXPECT_EQ(s.log_level, "debug");
    EXPECT_EQ(s.api.scheme, "http");
    EXPECT_EQ(s.api.host, "127.0.0.1");
    EXPECT_EQ(s.api.port, 8443);
    EXPECT_EQ(s.api.ca_file, "/tmp/ca.pem");
    EXPECT_DOUBLE_EQ(s.api.requests_per_minute, 300.5);
    EXPECT_EQ(s.api.max_connections, 8);
    EXPECT_EQ(s.api.max_submits_in_flight, 3);
    EXPECT_DOUBLE_EQ(s.api.request_timeout_s, 2.5);
    EXPECT_EQ(s.api.max_result_bytes, 65536u);
    EXPECT_EQ(s.storage.database, "/etc/klingd/db/klingd.db"); // relative to the file's folder
    EXPECT_EQ(s.spool.directory, "/srv/spool");
    EXPECT_EQ(s.spool.max_file_bytes, 4096u);
    EXPECT_EQ(s.output.max_download_bytes, 1048576u);
    EXPECT_EQ(s.control.socket, "/tmp/k.sock");
    EXPECT_EQ(s.control.socket_mode, 0600u);
    EXPECT_EQ(s.jobs.max_in_flight, 100000);
    EXPECT_DOUBLE_EQ(s.jobs.min_poll_interval_s, 0.1);
    EXPECT_TRUE(s.jobs.resubmit_unknown);
    EXPECT_DOUBLE_EQ(s.models.at("kling-o1").expected_duration_s, 0.58);
    EXPECT_EQ(s.models.at("kling-o1-video-to-video-edit").expected_duration_s, 223); // default kept
    EXPECT_EQ(s.models.at("other-model").expected_duration_s, 10);
}

TEST(config_values, ipv6_loopback_and_localhost_may_use_http) {
    for (auto url : {"http://[::1]:8080", "http://localhost:9000", "http://127.1.2.3"}) {
        auto r = parse(std::string("[api]\nbase_url = \"") + url + "\"\n");
        EXPECT_TRUE(r.value) << url << ": " << (r.errors.empty() ? "" : r.errors[0]);
    }
    auto r = parse("[api]\nbase_url = \"http://[::1]:8080\"\n");
    ASSERT_TRUE(r.value);
    EXPECT_EQ(r.value->api.host, "::1");
    EXPECT_EQ(r.value->api.port, 8080);
}

struct bad_case {
    const char* name;
    const char* toml;
    const char* expect_prefix; // "FILE:LINE: KEY"
    const char* expect_text;   // a part of the reason
};

void PrintTo(const bad_case& c, std::ostream* os) {
    *os << c.name;
}

class config_rejects : public ::testing::TestWithParam<bad_case> {};

TEST_P(config_rejects, names_key_and_line) {
    const auto& c = GetParam();
    std::string e = only_error(c.toml);
    EXPECT_EQ(e.rfind(std::string(file) + ":" + c.expect_prefix, 0), 0u) << e;
    EXPECT_NE(e.find(c.expect_text), std::string::npos) << e;
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(all, config_rejects, ::testing::Values(
    bad_case{"unknown_key", "[api]\nbase_url = \"https://x.example\"\nrequests_per_minit = 5\n", "3: api.requests_per_minit", "unknown key"},
    bad_case{"unknown_table", "[apii]\nx = 1\n", "1: apii", "unknown key or table"},
    bad_case{"unknown_model_key", "[models.\"kling-o1\"]\nexpected = 3\n", "2: models.\"kling-o1\".expected", "unknown key"},
    bad_case{"wrong_type_string_for_number", "[api]\nrequests_per_minute = \"60\"\n", "2: api.requests_per_minute", "expected a number"},
    bad_case{"wrong_type_float_for_integer", "[jobs]\nmax_in_flight = 1.5\n", "2: jobs.max_in_flight", "expected an integer"},
    bad_case{"wrong_type_bool", "[jobs]\nresubmit_unknown = \"yes\"\n", "2: jobs.resubmit_unknown", "expected true or false"},
    bad_case{"section_not_table", "api = 3\n", "1: api", "expected a table"},
    bad_case{"negative_budget", "[api]\nrequests_per_minute = -5\n", "2: api.requests_per_minute", "out of range"},
    bad_case{"zero_budget", "[api]\nrequests_per_minute = 0\n", "2: api.requests_per_minute", "out of range"},
    bad_case{"absurd_budget", "[api]\nrequests_per_minute = 1e12\n", "2: api.requests_per_minute", "out of range"},
    bad_case{"negative_connections", "[api]\nmax_connections = -1\n", "2: api.max_connections", "out of range"},
    bad_case{"absurd_submits", "[api]\nmax_submits_in_flight = 100000\n", "2: api.max_submits_in_flight", "out of range"},
    bad_case{"negative_timeout", "[api]\nrequest_timeout_s = -1\n", "2: api.request_timeout_s", "out of range"},
    bad_case{"nan_duration", "[jobs]\nmin_poll_interval_s = nan\n", "2: jobs.min_poll_interval_s", "finite"},
    bad_case{"negative_in_flight", "[jobs]\nmax_in_flight = -1\n", "2: jobs.max_in_flight", "out of range"},
    bad_case{"max_poll_not_below_retention", "[jobs]\nresult_retention_s = 3600\nmax_poll_interval_s = 3600\n", "3: jobs.max_poll_interval_s", "half of jobs.result_retention_s"},
    bad_case{"max_poll_above_retention", "[jobs]\nmax_poll_interval_s = 4000\n", "2: jobs.max_poll_interval_s", "result_retention_s (3600)"},
    bad_case{"min_above_max_poll", "[jobs]\nmin_poll_interval_s = 30\nmax_poll_interval_s = 10\n", "2: jobs.min_poll_interval_s", "must not exceed"},
    bad_case{"socket_mode_not_octal", "[control]\nsocket_mode = \"0689\"\n", "2: control.socket_mode", "not an octal mode"},
    bad_case{"socket_mode_integer", "[control]\nsocket_mode = 660\n", "2: control.socket_mode", "octal digits"},
    bad_case{"socket_mode_setuid", "[control]\nsocket_mode = \"4660\"\n", "2: control.socket_mode", "setuid"},
    bad_case{"socket_mode_owner_cannot_use", "[control]\nsocket_mode = \"0066\"\n", "2: control.socket_mode", "owner"},
    bad_case{"socket_path_too_long", "[control]\nsocket = \"/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\"\n", "2: control.socket", "at most 107"},
    bad_case{"http_to_remote_host", "\n[api]\nbase_url = \"http://api.segmind.com\"\n", "3: api.base_url", "only to a loopback host"},
    bad_case{"http_to_private_address", "[api]\nbase_url = \"http://10.0.0.5:80\"\n", "2: api.base_url", "loopback"},
    bad_case{"http_to_lookalike", "[api]\nbase_url = \"http://127.0.0.1.evil.example\"\n", "2: api.base_url", "loopback"},
    bad_case{"ftp_scheme", "[api]\nbase_url = \"ftp://api.segmind.com\"\n", "2: api.base_url", "must start with https://"},
    bad_case{"url_with_path", "[api]\nbase_url = \"https://api.segmind.com/v2\"\n", "2: api.base_url", "without path"},
    bad_case{"url_with_user", "[api]\nbase_url = \"https://user@api.segmind.com\"\n", "2: api.base_url", "without path"},
    bad_case{"url_bad_port", "[api]\nbase_url = \"https://api.segmind.com:99999\"\n", "2: api.base_url", "bad port"},
    bad_case{"url_no_host", "[api]\nbase_url = \"https://:443\"\n", "2: api.base_url", "no host"},
    bad_case{"url_empty_brackets", "[api]\nbase_url = \"https://[]:93\"\n", "2: api.base_url", "bad host"},
    bad_case{"url_brackets_in_name", "[api]\nbase_url = \"https://x[::1]:9443\"\n", "2: api.base_url", "bad host"},
    bad_case{"control_char_in_model_slug", "\n[models.\"a\\u0014b\"]\nexpected_duration_s = 58\n", "2: models", "[models.\"a\\u0014b\"]: the model slug may contain only"},
    bad_case{"bad_log_level", "log_level = \"loud\"\n", "1: log_level", "not a level"},
    bad_case{"empty_database", "[storage]\ndatabase = \"\"\n", "2: storage.database", "must not be empty"},
    bad_case{"control_char_in_path", "[spool]\ndirectory = \"/tmp/a\\u0001b\"\n", "2: spool.directory", "control characters"},
    bad_case{"zero_model_duration", "[models.\"kling-o1\"]\nexpected_duration_s = 0\n", "2: models.\"kling-o1\".expected_duration_s", "out of range"},
    bad_case{"postgresql_with_password", "[storage]\npostgresql = \"host=db user=k password=hunter2\"\n", "2: storage.postgresql", "must not hold a password"},
    bad_case{"postgresql_uri_with_password", "[storage]\npostgresql = \"postgresql://k:hunter2@db/klingd\"\n", "2: storage.postgresql", "password file"},
    bad_case{"postgresql_not_conninfo", "[storage]\npostgresql = \"host=db = nonsense\"\n", "2: storage.postgresql", "not a libpq connection string"},
    bad_case{"postgresql_unknown_option", "[storage]\npostgresql = \"hots=db\"\n", "2: storage.postgresql", "option names"},
    bad_case{"postgresql_with_ssl_password", "[storage]\npostgresql = \"host=db sslpassword=x\"\n", "2: storage.postgresql", "must not hold a password"},
    bad_case{"node_name_with_slash", "[cluster]\nnode = \"a/b\"\n", "2: cluster.node", "not a node name"},
    bad_case{"takeover_too_short", "[cluster]\ntakeover_s = 1\n", "2: cluster.takeover_s", "at least 3 seconds"},
    bad_case{"takeover_absurd", "[cluster]\ntakeover_s = 1e9\n", "2: cluster.takeover_s", "out of range"},
    bad_case{"negative_price", "[models.\"kling-o1\"]\nprice = -0.5\n", "2: models.\"kling-o1\".price", "out of range"},
    bad_case{"price_finer_than_a_millionth", "[models.\"kling-o1\"]\nprice = 0.0000001\n", "2: models.\"kling-o1\".price", "finer than a millionth"},
    bad_case{"price_as_text", "[models.\"kling-o1\"]\nprice = \"0.03\"\n", "2: models.\"kling-o1\".price", "expected a number"},
    bad_case{"absurd_limit", "[spend]\ndaily_limit = 1e300\n", "2: spend.daily_limit", "out of range"},
    bad_case{"large_limit_finer_than_a_millionth", "[spend]\ndaily_limit = 600000.0000004\n", "2: spend.daily_limit", "finer than a millionth"},
    bad_case{"unknown_spend_key", "[spend]\nweekly_limit = 3\n", "2: spend.weekly_limit", "unknown key"},
    bad_case{"price_above_daily_limit", "[spend]\ndaily_limit = 0.5\n[models.\"kling-o1\"]\nprice = 0.75\n", "4: models.\"kling-o1\".price", "0.75 is above spend.daily_limit (0.5)"},
    bad_case{"inputs_relative_folder", "[inputs]\ndirectories = [\"media\"]\n", "2: inputs.directories", "must be an absolute folder path"},
    bad_case{"inputs_root_folder", "[inputs]\ndirectories = [\"/srv\", \"/\"]\n", "2: inputs.directories", "any file of this host"},
    bad_case{"inputs_not_an_array", "[inputs]\ndirectories = \"/srv\"\n", "2: inputs.directories", "must be an array"},
    bad_case{"inputs_folder_holds_the_database", "[storage]\ndatabase = \"/tmp/k.db\"\n[inputs]\ndirectories = [\"/tmp/\"]\n", "4: inputs.directories", "/tmp holds storage.database"},
    bad_case{"inputs_folder_missing", "[inputs]\ndirectories = [\"/nonexistent/media\"]\n", "2: inputs.directories", "/nonexistent/media cannot be resolved"},
    bad_case{"inputs_plain_http_upload", "[inputs]\nupload_url = \"http://uploads.example.com/upload-asset\"\n", "2: inputs.upload_url", "only to a loopback host"},
    bad_case{"inputs_zero_bytes", "[inputs]\nmax_bytes = 0\n", "2: inputs.max_bytes", "out of range"},
    bad_case{"syntax_error", "[api\nbase_url = 1\n", "1: syntax", ""}
), [](const auto& info) { return std::string(info.param.name); });
// clang-format on

// Prices and limits are kept in whole millionths: 0.035 is 35000 exactly, and a sum of ten
// thousand of them is 350, not 349.99999.
TEST(config_values, money_is_exact_in_millionths) {
    auto r = parse("[spend]\ndaily_limit = 350\nmonthly_limit = 1000.000001\n"
                   "[models.\"kling-o1\"]\nprice = 0.035\n");
    ASSERT_TRUE(r.value) << (r.errors.empty() ? "" : r.errors[0]);
    const auto& s = *r.value;
    EXPECT_EQ(s.models.at("kling-o1").price_micro, 35000);
    EXPECT_EQ(s.spend.daily_limit_micro, 350'000'000);
    EXPECT_EQ(s.spend.monthly_limit_micro, 1'000'000'001);
    std::int64_t sum = 0;
    for (int i = 0; i < 10000; ++i) {
        sum += s.models.at("kling-o1").price_micro;
    }
    EXPECT_EQ(sum, s.spend.daily_limit_micro);
    EXPECT_EQ(klingd::core::money_text(sum), "350");
    EXPECT_EQ(klingd::core::money_text(35000), "0.035");
    EXPECT_EQ(klingd::core::money_text(1), "0.000001");
}

TEST(config_values, inputs_folders_are_normalised_and_the_upload_url_kept) {
    auto r = parse("[inputs]\ndirectories = [\"/var/tmp/\", \"/var/./tmp\", \"/usr/share\"]\n"
                   "upload_url = \"http://127.0.0.1:9/upload-asset\"\nmax_bytes = 2048\n");
    ASSERT_TRUE(r.value) << (r.errors.empty() ? "" : r.errors[0]);
    EXPECT_EQ(r.value->inputs.directories, (std::vector<std::string>{"/var/tmp", "/usr/share"}));
    EXPECT_EQ(r.value->inputs.real_directories.size(), 2u) << "resolved once, at load";
    EXPECT_EQ(r.value->inputs.upload_url, "http://127.0.0.1:9/upload-asset");
    EXPECT_EQ(r.value->inputs.max_bytes, 2048u);
    auto d = parse("");
    ASSERT_TRUE(d.value);
    EXPECT_TRUE(d.value->inputs.directories.empty()) << "no local files unless asked";
    EXPECT_EQ(d.value->inputs.upload_url, "https://workflows-api.segmind.com/upload-asset");
}

TEST(config_errors, all_problems_are_reported_at_once) {
    auto r = parse("[api]\nrequests_per_minute = -1\nmax_connections = 300\n[jobs]\nfoo = 1\n");
    EXPECT_FALSE(r.value);
    ASSERT_EQ(r.errors.size(), 3u);
    EXPECT_NE(r.errors[0].find(":2: api.requests_per_minute"), std::string::npos);
    EXPECT_NE(r.errors[1].find(":3: api.max_connections"), std::string::npos);
    EXPECT_NE(r.errors[2].find(":5: jobs.foo"), std::string::npos);
}

TEST(config_errors, world_writable_socket_is_a_warning) {
    auto r = parse("[control]\nsocket_mode = \"0666\"\n");
    ASSERT_TRUE(r.value);
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_NE(r.warnings[0].find("every local user"), std::string::npos);
}

class api_key_search : public ::testing::Test {
protected:
    klingd::test::temp_dir dir{"cfgkey"};
};

TEST_F(api_key_search, key_file_comes_first) {
    klingd::test::write_file(dir / "key", "from-file\n");
    ::chmod((dir / "key").c_str(), 0600);
    klingd::test::write_file(dir / "segmind-api-key", "from-credential\n");
    auto r = parse_settings(
        "[api]\napi_key_file = \"" + (dir / "key") + "\"\n", file,
        env_with({{"CREDENTIALS_DIRECTORY", dir.path()}, {"SEGMIND_API_KEY", "from-env"}}));
    ASSERT_TRUE(r.value) << r.errors.at(0);
    EXPECT_EQ(r.value->api_key.reveal(), "from-file");
    EXPECT_EQ(r.value->api_key_source, dir / "key");
    EXPECT_TRUE(r.warnings.empty());
}

TEST_F(api_key_search, then_the_systemd_credential) {
    klingd::test::write_file(dir / "segmind-api-key", "from-credential");
    auto r = parse_settings(
        "", file,
        env_with({{"CREDENTIALS_DIRECTORY", dir.path()}, {"SEGMIND_API_KEY", "from-env"}}));
    ASSERT_TRUE(r.value) << r.errors.at(0);
    EXPECT_EQ(r.value->api_key.reveal(), "from-credential");
}

TEST_F(api_key_search, then_the_environment) {
    auto r = parse_settings(
        "", file,
        env_with({{"CREDENTIALS_DIRECTORY", dir.path()}, {"SEGMIND_API_KEY", "from-env"}}));
    ASSERT_TRUE(r.value) << r.errors.at(0);
    EXPECT_EQ(r.value->api_key.reveal(), "from-env");
    EXPECT_EQ(r.value->api_key_source, "$SEGMIND_API_KEY");
}

TEST_F(api_key_search, none_is_an_error_that_says_where_to_put_it) {
    auto r = parse_settings("", file, env_with({}));
    ASSERT_FALSE(r.value);
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_NE(r.errors[0].find("no API key found"), std::string::npos);
    EXPECT_NE(r.errors[0].find("SEGMIND_API_KEY"), std::string::npos);
}

TEST_F(api_key_search, unreadable_key_file_names_the_file_not_the_key) {
    auto r =
        parse_settings("[api]\napi_key_file = \"" + (dir / "missing") + "\"\n", file, with_key);
    ASSERT_FALSE(r.value);
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_NE(
        r.errors[0].find(":2: api.api_key_file: cannot read the API key file " + (dir / "missing")),
        std::string::npos)
        << r.errors[0];
}

TEST_F(api_key_search, key_with_newline_inside_is_refused_without_quoting_it) {
    klingd::test::write_file(dir / "key", "secret-part-one\nsecret-part-two\n");
    auto r = parse_settings("[api]\napi_key_file = \"" + (dir / "key") + "\"\n", file, with_key);
    ASSERT_FALSE(r.value);
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_NE(r.errors[0].find("control character"), std::string::npos) << r.errors[0];
    EXPECT_EQ(r.errors[0].find("secret-part"), std::string::npos) << r.errors[0];
}

TEST_F(api_key_search, world_readable_key_file_warns) {
    klingd::test::write_file(dir / "key", "k");
    ::chmod((dir / "key").c_str(), 0644);
    auto r = parse_settings("[api]\napi_key_file = \"" + (dir / "key") + "\"\n", file, with_key);
    ASSERT_TRUE(r.value);
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_NE(r.warnings[0].find("readable by every user"), std::string::npos);
}

TEST(config_render, redacts_the_key_and_round_trips) {
    auto r = parse("[jobs]\nmin_poll_interval_s = 0.25\n");
    ASSERT_TRUE(r.value);
    std::string text = klingd::config::render_settings(*r.value);
    EXPECT_EQ(text.find("sk-test-0123456789"), std::string::npos);
    EXPECT_NE(text.find("api key: found in $SEGMIND_API_KEY (redacted)"), std::string::npos);
    EXPECT_NE(text.find("min_poll_interval_s = 0.25"), std::string::npos);
    EXPECT_NE(text.find("socket_mode = \"0660\""), std::string::npos);
    // The rendered text is itself a valid configuration with the same values.
    auto again = parse(text);
    ASSERT_TRUE(again.value) << again.errors.at(0);
    EXPECT_EQ(klingd::config::render_settings(*again.value), text);
}

// The real program: exit codes and output of --check-config and --version.
class check_config_program : public ::testing::Test {
protected:
    klingd::test::temp_dir dir{"checkcfg"};

    std::pair<int, klingd::test::child_process*> run(std::vector<std::string> args,
                                                     std::map<std::string, std::string> env) {
        proc_ = std::make_unique<klingd::test::child_process>(KLINGD_PATH, std::move(args),
                                                              std::move(env), "checkcfg");
        auto st = proc_->wait(std::chrono::seconds(10));
        return {st.value_or(-1), proc_.get()};
    }
    std::unique_ptr<klingd::test::child_process> proc_;
};

TEST_F(check_config_program, valid_config_prints_effective_settings_redacted) {
    klingd::test::write_file(dir / "k.toml", "[api]\nrequests_per_minute = 30\n");
    auto [rc, p] = run({"--check-config", "--config", dir / "k.toml"},
                       {{"SEGMIND_API_KEY", "sk-live-SECRET-42"}});
    EXPECT_EQ(rc, 0) << p->stderr_text();
    std::string out = p->stdout_text();
    EXPECT_NE(out.find("requests_per_minute = 30"), std::string::npos) << out;
    EXPECT_NE(out.find("(redacted)"), std::string::npos);
    EXPECT_EQ(out.find("SECRET"), std::string::npos);
    EXPECT_EQ(p->stderr_text().find("SECRET"), std::string::npos);
}

TEST_F(check_config_program, invalid_config_exits_2_with_key_and_line) {
    klingd::test::write_file(dir / "k.toml", "[jobs]\n\nmax_poll_interval_s = 9000\n");
    auto [rc, p] = run({"--check-config", "--config", dir / "k.toml"}, {{"SEGMIND_API_KEY", "k"}});
    EXPECT_EQ(rc, 2);
    EXPECT_NE(p->stderr_text().find(dir / "k.toml" + ":3: jobs.max_poll_interval_s"),
              std::string::npos)
        << p->stderr_text();
}

TEST_F(check_config_program, missing_file_exits_2) {
    auto [rc, p] =
        run({"--check-config", "--config", dir / "nope.toml"}, {{"SEGMIND_API_KEY", "k"}});
    EXPECT_EQ(rc, 2);
    EXPECT_NE(p->stderr_text().find("cannot read the configuration"), std::string::npos);
}

TEST_F(check_config_program, config_path_from_environment) {
    klingd::test::write_file(dir / "env.toml", "[api]\nmax_connections = 7\n");
    auto [rc, p] =
        run({"--check-config"}, {{"SEGMIND_API_KEY", "k"}, {"KLINGD_CONFIG", dir / "env.toml"}});
    EXPECT_EQ(rc, 0) << p->stderr_text();
    EXPECT_NE(p->stdout_text().find("max_connections = 7"), std::string::npos);
}

TEST_F(check_config_program, version) {
    auto [rc, p] = run({"--version"}, {});
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(p->stdout_text(), std::string("klingd ") + KLINGD_VERSION + "\n");
}

TEST_F(check_config_program, unknown_option_is_usage_error) {
    auto [rc, p] = run({"--frobnicate"}, {});
    EXPECT_EQ(rc, 2);
}

} // namespace

#include "config/reload.hpp"

namespace {

TEST(config_reload, applies_what_may_change_and_reports_what_needs_a_restart) {
    auto cur = *parse("").value;
    auto fresh = *parse(R"(
log_level = "debug"
[api]
requests_per_minute = 120
base_url = "https://other.example"
[jobs]
max_in_flight = 7
[models."kling-o1"]
expected_duration_s = 40
)",
                        env_with({{"SEGMIND_API_KEY", "a-new-key"}}))
                      .value;
    auto lines = klingd::config::apply_reload(cur, fresh);
    EXPECT_EQ(cur.log_level, "debug");
    EXPECT_EQ(cur.api.requests_per_minute, 120);
    EXPECT_EQ(cur.jobs.max_in_flight, 7);
    EXPECT_EQ(cur.models.at("kling-o1").expected_duration_s, 40);
    EXPECT_EQ(cur.api.base_url, "https://api.segmind.com"); // needs a restart
    EXPECT_EQ(cur.api_key.reveal(), "a-new-key");
    std::string all;
    for (auto& l : lines)
        all += l + "\n";
    EXPECT_NE(all.find("api.requests_per_minute: 60 -> 120"), std::string::npos) << all;
    EXPECT_NE(all.find("api.base_url changed to https://other.example but needs a restart"),
              std::string::npos);
    EXPECT_NE(all.find("the API key was read again"), std::string::npos);
    EXPECT_EQ(all.find("a-new-key"), std::string::npos) << "never the key itself";
    EXPECT_EQ(all.find("sk-test-0123456789"), std::string::npos);
    EXPECT_TRUE(klingd::config::apply_reload(cur, cur).empty());
}

TEST(config_reload, a_folder_kept_in_a_changed_list_keeps_its_old_resolution) {
    // /srv/media was replaced by a symlink to /etc since the start, and the reload also
    // adds /srv/new: the kept folder's boundary does not move, the new one is taken.
    auto cur = *parse("").value;
    cur.inputs.directories = {"/srv/media"};
    cur.inputs.real_directories = {"/srv/media"};
    auto fresh = cur;
    fresh.inputs.directories = {"/srv/new", "/srv/media"};
    fresh.inputs.real_directories = {"/srv/new", "/etc"};
    auto lines = klingd::config::apply_reload(cur, fresh);
    EXPECT_EQ(cur.inputs.directories, fresh.inputs.directories);
    EXPECT_EQ(cur.inputs.real_directories, (std::vector<std::string>{"/srv/new", "/srv/media"}));
    std::string all;
    for (auto& l : lines)
        all += l + "\n";
    EXPECT_NE(all.find("resolved before are kept"), std::string::npos) << all;
    // A folder dropped from the list is dropped from the boundary.
    fresh.inputs.directories = {"/srv/new"};
    fresh.inputs.real_directories = {"/srv/new"};
    klingd::config::apply_reload(cur, fresh);
    EXPECT_EQ(cur.inputs.real_directories, (std::vector<std::string>{"/srv/new"}));
}

} // namespace

namespace {

TEST(config_cluster, postgresql_node_and_takeover_are_read_and_the_node_defaults_to_the_host) {
    auto r = parse("[storage]\npostgresql = \"postgresql://klingd@db.example/klingd\"\n"
                   "[cluster]\nnode = \"worker-1.a_b\"\ntakeover_s = 12.5\n");
    ASSERT_TRUE(r.value) << r.errors.at(0);
    EXPECT_EQ(r.value->storage.postgresql, "postgresql://klingd@db.example/klingd");
    EXPECT_EQ(r.value->cluster.node, "worker-1.a_b");
    EXPECT_EQ(r.value->cluster.takeover_s, 12.5);
    auto d = parse("");
    ASSERT_TRUE(d.value);
    EXPECT_TRUE(d.value->storage.postgresql.empty());
    EXPECT_EQ(d.value->cluster.takeover_s, 30);
    char host[256] = {};
    ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
    std::string shortname = host;
    shortname = shortname.substr(0, shortname.find('.'));
    EXPECT_EQ(d.value->cluster.node, shortname);
}

TEST(config_cluster, a_uri_that_does_not_parse_is_refused_without_quoting_it) {
    // libpq's own message would quote the token, here the password.
    auto e = only_error("[storage]\npostgresql = \"postgresql://u:100%sure@db/x\"\n");
    EXPECT_NE(e.find("storage.postgresql"), std::string::npos) << e;
    EXPECT_EQ(e.find("100%sure"), std::string::npos) << e;
    EXPECT_EQ(e.find("sure"), std::string::npos) << e;
}

TEST(config_cluster, the_password_credential_is_read_and_never_rendered) {
    klingd::test::temp_dir creds("creds");
    klingd::test::write_file(creds / "postgresql-password", "s3cret-pw\n");
    auto r = parse("[storage]\npostgresql = \"host=/run/postgresql dbname=klingd\"\n",
                   env_with({{"SEGMIND_API_KEY", "sk-test-0123456789"},
                             {"CREDENTIALS_DIRECTORY", creds.path()}}));
    ASSERT_TRUE(r.value) << r.errors.at(0);
    EXPECT_EQ(r.value->postgresql_password.reveal(), "s3cret-pw");
    auto text = klingd::config::render_settings(*r.value);
    EXPECT_EQ(text.find("s3cret-pw"), std::string::npos) << text;
    EXPECT_NE(text.find("postgresql-password (redacted)"), std::string::npos) << text;
}

} // namespace
