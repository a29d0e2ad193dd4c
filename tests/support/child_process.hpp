// A real child process for tests: spawned with arguments and extra environment,
// its stdout and stderr captured to files, stopped by a real signal.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <sys/types.h>
#include <vector>

namespace klingd::test {

class child_process {
public:
    // Throws std::runtime_error when the program cannot be started.
    child_process(std::string program, std::vector<std::string> args,
                  std::map<std::string, std::string> extra_env = {}, std::string log_prefix = "");
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;
    ~child_process(); // SIGKILLs the child if it still runs

    pid_t pid() const { return pid_; }
    bool running();
    void signal(int sig);
    // Exit status (or 128 + signal); nullopt when it did not end within timeout.
    std::optional<int> wait(std::chrono::milliseconds timeout);
    // SIGKILL and reap.
    void kill_hard();
    std::string stdout_text() const;
    std::string stderr_text() const;
    const std::string& stdout_path() const { return out_path_; }
    const std::string& stderr_path() const { return err_path_; }

private:
    pid_t pid_ = -1;
    std::optional<int> status_;
    std::string out_path_;
    std::string err_path_;
};

// Polls until pred() is true; false when timeout passes first.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout,
                std::chrono::milliseconds step = std::chrono::milliseconds(20));

// A fresh empty directory under the build tree's test area, removed by the destructor.
class temp_dir {
public:
    explicit temp_dir(const std::string& tag = "t");
    ~temp_dir();
    const std::string& path() const { return path_; }
    std::string operator/(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

// fn() in a forked child (which may change what it is: unshare, setuid, mount) and what
// it returned, read back through a pipe once the child has ended.
std::string in_child(const std::function<std::string()>& fn);

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

// Where the test certificates live (made once by scripts/make-test-certs.sh).
std::string cert_dir();

} // namespace klingd::test

#include <thread>

template <typename Pred>
bool klingd::test::eventually(Pred pred, std::chrono::milliseconds timeout,
                              std::chrono::milliseconds step) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
        if (pred())
            return true;
        if (std::chrono::steady_clock::now() >= end)
            return false;
        std::this_thread::sleep_for(step);
    }
}
