// Starting segmind-sim for a test and waiting until it listens.
#include "tests/support/sim_process.hpp"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

namespace klingd::test {

sim_process::sim_process(std::vector<std::string> extra_args,
                         std::map<std::string, std::string> extra_env)
    : dir_("sim") {
    plain_ = std::find(extra_args.begin(), extra_args.end(), "--plain") != extra_args.end();
    std::string port_file = dir_ / "port";
    std::vector<std::string> args{"--listen", "127.0.0.1:0", "--port-file", port_file};
    bool own_cert =
        std::find(extra_args.begin(), extra_args.end(), "--tls-cert") != extra_args.end();
    if (!plain_ && !own_cert) {
        args.insert(args.end(), {"--tls-cert", cert_dir() + "/server.pem", "--tls-key",
                                 cert_dir() + "/server.key"});
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    child_ = std::make_unique<child_process>(SEGMIND_SIM_PATH, args, std::move(extra_env),
                                             "segmind-sim");
    bool ready =
        eventually([&] { return std::filesystem::exists(port_file) || !child_->running(); },
                   std::chrono::seconds(10), std::chrono::milliseconds(5));
    if (!ready || !std::filesystem::exists(port_file))
        throw std::runtime_error("segmind-sim did not start: " + child_->stderr_text());
    port_ = std::stoi(read_file(port_file));
}

std::string sim_process::base_url() const {
    return std::string(plain_ ? "http" : "https") + "://127.0.0.1:" + std::to_string(port_);
}

std::string sim_process::ca_file() const {
    return cert_dir() + "/ca.pem";
}

} // namespace klingd::test
