// A real PostgreSQL server for tests (tests/support/pg-local.sh): throwaway, on a
// Unix socket in a folder of its own, started and stopped for real.
#pragma once

#include <string>

namespace klingd::test {

class pg_server {
public:
    // A new server in a fresh folder under /tmp, removed by the destructor.
    pg_server();
    // The server already running in dir (the ctest fixture's), left running.
    explicit pg_server(std::string dir);
    ~pg_server();
    pg_server(const pg_server&) = delete;
    pg_server& operator=(const pg_server&) = delete;

    void start();
    void stop(); // fast shutdown: connections are cut
    void kill(); // immediate shutdown, as in a crash
    // Stops (SIGSTOP) or resumes (SIGCONT) the server and every one of its processes: a
    // database that accepts connections but never answers (a frozen host, a full disk).
    void freeze();
    void thaw();

    // libpq's connection string for one of its databases.
    std::string conninfo(const std::string& db = "postgres") const;
    // A new empty database; its connection string.
    std::string create_database();
    // Runs sql on db, synchronously; throws std::runtime_error with the server's message.
    std::string query_value(const std::string& db, const std::string& sql) const;
    const std::string& dir() const { return dir_; }

private:
    void script(const std::string& verb) const;
    void signal_all(int sig) const;

    std::string dir_;
    bool owned_;
    bool frozen_ = false;
};

// The suite's shared server: the ctest fixture's (KLINGD_TEST_PG_FILE names its folder),
// else one started for this process and removed at its exit.
pg_server& shared_pg_server();

// A new empty database on the shared server: its connection string.
std::string fresh_pg_database();

} // namespace klingd::test
