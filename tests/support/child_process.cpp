// Process, file and directory helpers shared by every test executable.
#include "tests/support/child_process.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <signal.h>
#include <spawn.h>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace klingd::test {
namespace fs = std::filesystem;

namespace {
std::string unique_name(const std::string& tag) {
    static std::atomic<int> counter{0};
    return tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}
std::string test_root() {
    std::string root = std::string(KLINGD_BINARY_DIR) + "/test-tmp";
    fs::create_directories(root);
    return root;
}
} // namespace

child_process::child_process(std::string program, std::vector<std::string> args,
                             std::map<std::string, std::string> extra_env, std::string log_prefix) {
    std::string base = test_root() + "/" + unique_name(log_prefix.empty() ? "proc" : log_prefix);
    out_path_ = base + ".out";
    err_path_ = base + ".err";

    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        std::string kv = *e;
        auto name = kv.substr(0, kv.find('='));
        if (!extra_env.count(name))
            env_strings.push_back(kv);
    }
    for (auto& [k, v] : extra_env)
        env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings)
        envp.push_back(s.data());
    envp.push_back(nullptr);

    args.insert(args.begin(), program);
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    int rc = posix_spawn(&pid_, program.c_str(), &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0)
        throw std::runtime_error("cannot start " + program + ": " + std::strerror(rc));
}

child_process::~child_process() {
    if (pid_ > 0 && !status_)
        kill_hard();
}

bool child_process::running() {
    if (status_)
        return false;
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return false;
    }
    return true;
}

void child_process::signal(int sig) {
    if (!status_)
        ::kill(pid_, sig);
}

std::optional<int> child_process::wait(std::chrono::milliseconds timeout) {
    eventually([&] { return !running(); }, timeout, std::chrono::milliseconds(5));
    return status_;
}

void child_process::kill_hard() {
    if (status_)
        return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string child_process::stdout_text() const {
    return read_file(out_path_);
}
std::string child_process::stderr_text() const {
    return read_file(err_path_);
}

temp_dir::temp_dir(const std::string& tag) {
    path_ = test_root() + "/" + unique_name(tag);
    fs::remove_all(path_);
    fs::create_directories(path_);
}

temp_dir::~temp_dir() {
    std::error_code ec;
    if (!std::getenv("KLINGD_KEEP_TEST_FILES"))
        fs::remove_all(path_, ec);
}

std::string in_child(const std::function<std::string()>& fn) {
    int pipefd[2];
    if (::pipe(pipefd) != 0)
        throw std::runtime_error("in_child: pipe failed");
    pid_t pid = ::fork();
    if (pid < 0)
        throw std::runtime_error("in_child: fork failed");
    if (pid == 0) {
        ::close(pipefd[0]);
        std::string out;
        try {
            out = fn();
        } catch (const std::exception& e) {
            out = std::string("error: ") + e.what();
        }
        (void)!::write(pipefd[1], out.data(), out.size());
        ::_exit(0);
    }
    ::close(pipefd[1]);
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;)
        got.append(buf, static_cast<std::size_t>(n));
    ::close(pipefd[0]);
    ::waitpid(pid, nullptr, 0);
    return got;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const std::string& path, const std::string& content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
    if (!out)
        throw std::runtime_error("cannot write " + path);
}

std::string cert_dir() {
    std::string dir = std::string(KLINGD_BINARY_DIR) + "/test-certs";
    if (!fs::exists(dir + "/server.pem")) {
        std::string cmd =
            std::string(KLINGD_SOURCE_DIR) + "/scripts/make-test-certs.sh '" + dir + "'";
        if (std::system(cmd.c_str()) != 0)
            throw std::runtime_error("scripts/make-test-certs.sh failed");
    }
    return dir;
}

} // namespace klingd::test
