// segmind-sim as a child process for tests: started on a free port over TLS
// (the test certificates) or plain HTTP, ready once its port file appears,
// killed when the object goes away.
#pragma once

#include "tests/support/child_process.hpp"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace klingd::test {

class sim_process {
public:
    // extra_args go after --listen, --port-file and the TLS options; pass
    // "--plain" for HTTP, or --tls-cert and --tls-key for another certificate. Throws
    // std::runtime_error, with the sim's stderr, when it is not listening within 10 seconds.
    explicit sim_process(std::vector<std::string> extra_args = {},
                         std::map<std::string, std::string> extra_env = {});

    std::string base_url() const; // https://127.0.0.1:PORT (http:// with --plain)
    int port() const { return port_; }
    std::string ca_file() const; // the CA that signed the sim's certificate
    child_process& process() { return *child_; }

private:
    temp_dir dir_;
    bool plain_ = false;
    int port_ = 0;
    std::unique_ptr<child_process> child_;
};

} // namespace klingd::test
