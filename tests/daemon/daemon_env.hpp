// A whole klingd installation for end-to-end tests: segmind-sim over TLS, a
// configuration scaled to the sim's time scale, a real klingd process (started,
// SIGTERMed, SIGKILLed and restarted for real), and HTTP over its socket.
#pragma once

#include "tests/support/child_process.hpp"
#include "tests/support/https_client.hpp"
#include "tests/support/sim_process.hpp"

#include <boost/json.hpp>
#include <memory>
#include <string>
#include <vector>

namespace klingd::test {

struct reply_json {
    int status = 0;
    boost::json::value body;
    std::string text;
};

// One request over a Unix socket; status 0 when nothing answered.
reply_json unix_request(const std::string& socket, const std::string& method,
                        const std::string& target, const std::string& body = {});

struct daemon_options {
    double scale = 0.02;            // the sim's time scale; klingd's durations follow it
    double requests_per_minute = 0; // 0: 60 per API minute, scaled
    bool resubmit_unknown = false;
    int max_in_flight = 50;
    double retention_s = 0; // jobs.result_retention_s; 0: the API's hour, scaled
    std::string extra_toml; // appended to [jobs]
    std::vector<std::string> sim_args;
    std::string api_key = "test-key-1";
    std::string log_level = "info";
    // A cluster node: the shared database (storage.postgresql), its name and takeover time.
    std::string postgresql;
    std::string node;
    double takeover_s = 3;
    // Nodes of one cluster share one emulator (one account): not owned, outlives the env.
    sim_process* shared_sim = nullptr;
};

class daemon_env {
public:
    explicit daemon_env(daemon_options o = {});
    ~daemon_env();

    // Starts klingd (with extra environment) and waits until its socket answers /v1/health.
    void start(std::map<std::string, std::string> extra_env = {});
    void signal(int sig);
    // SIGTERM and wait; returns the exit status.
    int stop();
    void kill9();
    bool running();
    // The running klingd's process id (-1 when none runs).
    int pid();

    const daemon_options& options() const { return opts_; }
    sim_process& sim() { return *sim_; }
    const std::string& dir() const { return dir_.path(); }
    std::string socket() const { return dir_ / "klingd.sock"; }
    std::string incoming() const { return dir_ / "spool/incoming"; }
    std::string output() const { return dir_ / "output"; }
    std::string config_path() const { return dir_ / "klingd.toml"; }
    std::string log() const;

    // Writes a job file with write-then-rename.
    void drop(const std::string& name, const std::string& content);
    reply_json api(const std::string& method, const std::string& target,
                   const std::string& body = {});
    // The job object, or a null value when unknown.
    boost::json::value job(const std::string& id);
    std::string state(const std::string& id);
    // All jobs (pages through the list).
    std::vector<boost::json::value> jobs();
    // Waits until every job of ids is terminal; false on timeout.
    bool wait_terminal(const std::vector<std::string>& ids, std::chrono::seconds timeout);
    boost::json::value sim_stats(bool with_requests = true);
    void sim_config(const std::string& json);

private:
    void write_config();

    daemon_options opts_;
    temp_dir dir_;
    std::unique_ptr<sim_process> own_sim_;
    sim_process* sim_ = nullptr;
    std::unique_ptr<child_process> klingd_;
    int generation_ = 0;
    std::vector<std::string> old_logs_;
};

// An integer from the environment (a long form of a test), or fallback when unset.
int env_int(const char* name, int fallback);

// A kling-o1 job whose prompt carries a unique marker (tests find it in the sim's stats).
std::string image_job(const std::string& marker, const std::string& extra_params = "");
// Drops n image jobs PREFIX0.json .. PREFIX{n-1}.json into the spool; their ids.
std::vector<std::string> drop_image_jobs(daemon_env& env, const std::string& prefix, int n);
std::string video_job(const std::string& marker);

// A field of a JSON object as text: strings as they are, other values serialised, "" when
// absent or null.
std::string str(const boost::json::value& v, std::string_view key);
// How many accepted submits the sim saw per marker (the prompt's first word).
std::map<std::string, int> submissions_by_marker(const boost::json::value& stats);
// Requests the sim counted for an endpoint (submit, status, result), of one answer code or all.
std::uint64_t count(const boost::json::value& stats, std::string_view endpoint,
                    std::string_view code = {});
std::uint64_t api_requests(const boost::json::value& stats);
std::uint64_t answers_429(const boost::json::value& stats);
// Completed with result.json and media that match, byte for byte, what the sim serves
// (gtest failures otherwise).
void expect_completed_with_exact_media(daemon_env& env, const std::string& id);

} // namespace klingd::test
