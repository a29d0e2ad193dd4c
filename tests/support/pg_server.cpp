// Starting and stopping through pg-local.sh; queries through libpq, synchronously.
#include "tests/support/pg_server.hpp"

#include "tests/support/child_process.hpp"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <libpq-fe.h>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <unistd.h>
#include <vector>

namespace klingd::test {

namespace {
const std::string script_path = std::string(KLINGD_SOURCE_DIR) + "/scripts/pg-local.sh";

std::string new_dir() {
    char name[] = "/tmp/klingd-pg.XXXXXX";
    if (!::mkdtemp(name))
        throw std::runtime_error("pg_server: mkdtemp failed");
    return name;
}
} // namespace

pg_server::pg_server() : dir_(new_dir()), owned_(true) {
    start();
}

pg_server::pg_server(std::string dir) : dir_(std::move(dir)), owned_(false) {}

pg_server::~pg_server() {
    if (owned_) {
        try {
            if (frozen_)
                thaw(); // a test that failed while the server was frozen
            script("remove");
        } catch (...) {
        }
    }
}

void pg_server::script(const std::string& verb) const {
    child_process p("/bin/bash", {script_path, verb, dir_});
    auto rc = p.wait(std::chrono::seconds(90));
    if (rc != 0)
        throw std::runtime_error("pg-local.sh " + verb + " " + dir_ +
                                 " failed: " + p.stderr_text() + p.stdout_text());
}

void pg_server::start() {
    script("start");
}
void pg_server::stop() {
    script("stop");
}
void pg_server::kill() {
    script("kill");
}

void pg_server::signal_all(int sig) const {
    // The postmaster's pid is the first line of postmaster.pid; its children are the
    // processes whose parent it is (/proc/PID/stat, field 4).
    std::ifstream pidfile(dir_ + "/data/postmaster.pid");
    long postmaster = 0;
    if (!(pidfile >> postmaster) || postmaster <= 0)
        throw std::runtime_error("pg_server: no postmaster.pid in " + dir_);
    std::vector<long> pids{postmaster};
    for (auto& e : std::filesystem::directory_iterator("/proc")) {
        auto name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos)
            continue;
        std::ifstream stat(e.path() / "stat");
        std::string line;
        if (!std::getline(stat, line))
            continue;
        auto close = line.rfind(')'); // the command name may hold spaces
        if (close == std::string::npos)
            continue;
        std::istringstream rest(line.substr(close + 1));
        std::string state;
        long parent = 0;
        if (rest >> state >> parent && parent == postmaster)
            pids.push_back(std::stol(name));
    }
    for (long pid : pids)
        ::kill(static_cast<pid_t>(pid), sig);
}

void pg_server::freeze() {
    frozen_ = true;
    signal_all(SIGSTOP);
}

void pg_server::thaw() {
    signal_all(SIGCONT);
    frozen_ = false;
}

std::string pg_server::conninfo(const std::string& db) const {
    return "host=" + dir_ + "/sock port=5432 user=klingd dbname=" + db;
}

std::string pg_server::query_value(const std::string& db, const std::string& sql) const {
    std::unique_ptr<PGconn, decltype(&PQfinish)> c(PQconnectdb(conninfo(db).c_str()), PQfinish);
    if (PQstatus(c.get()) != CONNECTION_OK)
        throw std::runtime_error(std::string("pg_server: cannot connect: ") +
                                 PQerrorMessage(c.get()));
    std::unique_ptr<PGresult, decltype(&PQclear)> r(PQexec(c.get(), sql.c_str()), PQclear);
    auto st = PQresultStatus(r.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        throw std::runtime_error("pg_server: " + sql + ": " + PQresultErrorMessage(r.get()));
    if (st == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 && PQnfields(r.get()) > 0)
        return PQgetvalue(r.get(), 0, 0);
    return {};
}

std::string pg_server::create_database() {
    static std::atomic<int> n{0};
    std::string name = "t" + std::to_string(::getpid()) + "_" + std::to_string(n++);
    query_value("postgres", "CREATE DATABASE " + name);
    return conninfo(name);
}

pg_server& shared_pg_server() {
    static std::unique_ptr<pg_server> server = [] {
        if (const char* file = std::getenv("KLINGD_TEST_PG_FILE")) {
            std::ifstream in(file);
            std::string dir;
            if (in >> dir)
                return std::make_unique<pg_server>(dir);
        }
        return std::make_unique<pg_server>();
    }();
    return *server;
}

std::string fresh_pg_database() {
    return shared_pg_server().create_database();
}

} // namespace klingd::test
