// One PostgreSQL connection driven by the caller's Asio event loop: libpq's
// asynchronous API (PQconnectStart/PQconnectPoll, PQsendQueryParams, PQconsumeInput)
// with the connection's socket watched by Asio, so the loop never blocks on the
// database. Every call has a deadline; a call that misses it, or a connection that
// breaks, closes the connection (the next call opens a new one) and is reported as
// errc::store_unavailable. Not thread-safe, and one call at a time: callers take turns
// (pg_repository's lane).
#pragma once

#include "core/error.hpp"

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct pg_conn;
struct pg_result;

namespace klingd::storage::pg {

// A statement's answer (text format): rows of nullable text cells.
class rows {
public:
    rows() = default;
    explicit rows(pg_result* r);

    int size() const;
    bool null(int row, int col) const;
    std::string text(int row, int col) const;
    std::optional<std::string> opt_text(int row, int col) const;
    std::int64_t int64(int row, int col) const;
    std::optional<std::int64_t> opt_int64(int row, int col) const;
    double real(int row, int col) const;
    // Rows an INSERT, UPDATE or DELETE touched.
    std::int64_t affected() const;

private:
    std::shared_ptr<pg_result> r_;
};

using param = std::optional<std::string>;

// Shutdown, before the event loops go: waits for connections being made on libpq's
// connect threads (at most their connect_timeout) and makes no more.
void finish_connects();

// PostgreSQL's text form of a one-dimensional array, for a parameter cast to text[],
// bigint[] or int[]: {"a","b\"c",NULL}.
std::string array(const std::vector<param>& items);

// The conninfo without any password (key=value or URI form), for messages and logs.
std::string without_password(std::string_view conninfo);

class connection {
public:
    // password: given apart from conninfo (never in it, so never in a message).
    explicit connection(std::string conninfo,
                        std::chrono::milliseconds deadline = std::chrono::seconds(10),
                        std::string password = {});
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    // One statement with text parameters ($1, $2, ...); connects first when needed.
    boost::asio::awaitable<core::result<rows>> query(std::string sql, std::vector<param> params);
    // Statements without parameters, separated by ';', in one implicit transaction
    // unless they say BEGIN/COMMIT themselves (migrations).
    boost::asio::awaitable<core::result<void>> script(std::string sql);

    bool connected() const { return conn_ != nullptr; }
    void close();
    void set_deadline(std::chrono::milliseconds d) { deadline_ = d; }
    // Where the connection goes, without its password (for messages).
    const std::string& target() const { return target_; }

private:
    boost::asio::awaitable<core::result<void>> ensure();
    boost::asio::awaitable<core::result<rows>> run(std::string sql, std::vector<param>* params);
    core::error fail(std::string what);

    std::string conninfo_;
    std::string password_;
    std::string target_;
    std::chrono::milliseconds deadline_;
    pg_conn* conn_ = nullptr;
};

} // namespace klingd::storage::pg
