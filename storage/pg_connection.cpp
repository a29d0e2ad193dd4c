// libpq's asynchronous calls, with the socket's readiness awaited on the caller's loop.
#include "storage/pg_connection.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <libpq-fe.h>
#include <utility>

namespace klingd::storage::pg {

namespace asio = boost::asio;
using core::errc;

rows::rows(pg_result* r) : r_(r, PQclear) {}

int rows::size() const {
    return r_ ? PQntuples(r_.get()) : 0;
}
bool rows::null(int row, int col) const {
    return PQgetisnull(r_.get(), row, col) != 0;
}
std::string rows::text(int row, int col) const {
    return std::string(PQgetvalue(r_.get(), row, col),
                       static_cast<std::size_t>(PQgetlength(r_.get(), row, col)));
}
std::optional<std::string> rows::opt_text(int row, int col) const {
    if (null(row, col))
        return std::nullopt;
    return text(row, col);
}
std::int64_t rows::int64(int row, int col) const {
    return null(row, col) ? 0 : std::strtoll(PQgetvalue(r_.get(), row, col), nullptr, 10);
}
std::optional<std::int64_t> rows::opt_int64(int row, int col) const {
    if (null(row, col))
        return std::nullopt;
    return int64(row, col);
}
double rows::real(int row, int col) const {
    return null(row, col) ? 0.0 : std::strtod(PQgetvalue(r_.get(), row, col), nullptr);
}
std::int64_t rows::affected() const {
    const char* n = r_ ? PQcmdTuples(r_.get()) : "";
    return *n ? std::strtoll(n, nullptr, 10) : 0;
}

std::string array(const std::vector<param>& items) {
    std::string out = "{";
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i)
            out += ',';
        if (!items[i]) {
            out += "NULL";
            continue;
        }
        out += '"';
        for (char c : *items[i]) {
            if (c == '"' || c == '\\')
                out += '\\';
            out += c;
        }
        out += '"';
    }
    out += '}';
    return out;
}

std::string without_password(std::string_view conninfo) {
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(std::string(conninfo).c_str(), &err);
    if (!opts) {
        PQfreemem(err);
        return "(a connection string that does not parse)";
    }
    std::string out;
    for (auto* o = opts; o->keyword; ++o) {
        // Every option libpq itself hides ("*": password, sslpassword, ...).
        if (!o->val || (o->dispchar && o->dispchar[0] == '*'))
            continue;
        if (!out.empty())
            out += ' ';
        out += fmt::format("{}={}", o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return out.empty() ? std::string("(libpq defaults)") : out;
}

namespace {

// What kind of failure an SQLSTATE is.
errc kind_of(const char* sqlstate) {
    std::string_view s = sqlstate ? sqlstate : "";
    if (s.starts_with("08") || s == "57P01" || s == "57P02" || s == "57P03")
        return errc::store_unavailable; // connection exceptions, admin shutdown, cannot connect now
    if (s == "53100" || s == "53200" || s == "54000")
        return errc::store_full;
    if (s == "25006")
        return errc::store_read_only;
    if (s == "40001" || s == "40P01" || s == "55P03")
        return errc::store_busy;
    return errc::store_failed;
}

std::string trimmed(const char* m) {
    std::string s = m ? m : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

enum class readiness { read, write };

// libpq's socket, watched by Asio but never closed by it: released before the
// descriptor goes, also when a coroutine waiting on it is dropped at shutdown.
struct borrowed_fd {
    asio::posix::stream_descriptor sd;
    borrowed_fd(const asio::any_io_executor& ex, int fd) : sd(ex, fd) {}
    ~borrowed_fd() {
        if (sd.is_open())
            sd.release();
    }
    void cancel(boost::system::error_code& ec) { sd.cancel(ec); }
};

// Waits until fd is ready, or the deadline passes (false).
asio::awaitable<bool> wait_ready(int fd, readiness r, std::chrono::steady_clock::time_point until) {
    auto ex = co_await asio::this_coro::executor;
    auto sd = std::make_shared<borrowed_fd>(ex, fd);
    auto timer = std::make_shared<asio::steady_timer>(ex, until);
    auto timed_out = std::make_shared<bool>(false);
    timer->async_wait([sd, timed_out](boost::system::error_code ec) {
        if (!ec) {
            *timed_out = true;
            boost::system::error_code ignored;
            sd->cancel(ignored);
        }
    });
    boost::system::error_code ec;
    co_await sd->sd.async_wait(r == readiness::read ? asio::posix::descriptor_base::wait_read
                                                    : asio::posix::descriptor_base::wait_write,
                               asio::redirect_error(asio::use_awaitable, ec));
    // The timer's handler may run after this frame ends: it holds what it touches. The
    // socket leaves Asio's watch now (the next wait registers it again).
    timer->cancel();
    sd->sd.release();
    co_return !*timed_out;
}

// A new connection, made on a thread of its own: libpq resolves host names (and may talk
// GSSAPI) synchronously, which would stall the event loop. The answer comes back to the
// caller's executor; a connection nobody awaits any more is closed there.
struct made {
    pg_conn* conn = nullptr; // owned: closed unless taken
    std::string error;
    made() = default;
    made(made&& o) noexcept : conn(std::exchange(o.conn, nullptr)), error(std::move(o.error)) {}
    made& operator=(made&&) = delete;
    ~made() {
        if (conn)
            PQfinish(conn);
    }
};

asio::thread_pool& connect_threads() {
    static asio::thread_pool pool(2);
    return pool;
}

} // namespace

void finish_connects() {
    connect_threads().join();
}

namespace {

asio::awaitable<made> connect_elsewhere(std::string conninfo, std::string password,
                                        std::chrono::milliseconds deadline) {
    return asio::async_initiate<const asio::use_awaitable_t<>, void(made)>(
        [conninfo = std::move(conninfo), password = std::move(password),
         deadline](auto handler) mutable {
            auto ex = asio::get_associated_executor(handler);
            asio::post(connect_threads(),
                       [conninfo = std::move(conninfo), password = std::move(password), deadline,
                        handler = std::move(handler), work = asio::make_work_guard(ex)]() mutable {
                           // libpq's connect_timeout is whole seconds, at least 2; the connection
                           // string may set its own (it comes after, and wins).
                           auto secs = std::to_string(std::max<std::int64_t>(
                               2, std::chrono::ceil<std::chrono::seconds>(deadline).count()));
                           std::vector<const char*> keys{"connect_timeout", "dbname"};
                           std::vector<const char*> values{secs.c_str(), conninfo.c_str()};
                           if (!password.empty()) {
                               keys.push_back("password");
                               values.push_back(password.c_str());
                           }
                           keys.push_back(nullptr);
                           values.push_back(nullptr);
                           made out;
                           out.conn = PQconnectdbParams(keys.data(), values.data(), 1);
                           if (!out.conn) {
                               out.error = "out of memory";
                           } else if (PQstatus(out.conn) != CONNECTION_OK) {
                               out.error = trimmed(PQerrorMessage(out.conn));
                               PQfinish(std::exchange(out.conn, nullptr));
                           }
                           auto to = work.get_executor();
                           asio::post(to, [handler = std::move(handler), out = std::move(out),
                                           work = std::move(work)]() mutable {
                               std::move(handler)(std::move(out));
                           });
                       });
        },
        asio::use_awaitable);
}

} // namespace

connection::connection(std::string conninfo, std::chrono::milliseconds deadline,
                       std::string password)
    : conninfo_(std::move(conninfo)), password_(std::move(password)),
      target_(without_password(conninfo_)), deadline_(deadline) {}

connection::~connection() {
    close();
}

void connection::close() {
    if (conn_)
        PQfinish(conn_);
    conn_ = nullptr;
}

core::error connection::fail(std::string what) {
    std::string detail = conn_ ? trimmed(PQerrorMessage(conn_)) : std::string();
    close();
    return core::error(errc::store_unavailable,
                       detail.empty()
                           ? fmt::format("PostgreSQL ({}): {}", target_, what)
                           : fmt::format("PostgreSQL ({}): {}: {}", target_, what, detail));
}

asio::awaitable<core::result<void>> connection::ensure() {
    if (conn_ && PQstatus(conn_) == CONNECTION_OK)
        co_return core::result<void>{};
    close();
    auto m = co_await connect_elsewhere(conninfo_, password_, deadline_);
    if (!m.conn)
        co_return core::error(errc::store_unavailable,
                              fmt::format("PostgreSQL ({}): cannot connect: {}", target_, m.error));
    conn_ = std::exchange(m.conn, nullptr);

    if (PQsetnonblocking(conn_, 1) != 0)
        co_return fail("cannot use the connection without blocking");
    // The server's notices ("relation ... already exists, skipping") are not for the log.
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
    co_return core::result<void>{};
}

asio::awaitable<core::result<rows>> connection::run(std::string sql, std::vector<param>* params) {
    auto opened = co_await ensure();
    if (!opened)
        co_return opened.error();
    auto until = std::chrono::steady_clock::now() + deadline_;
    int sent;
    if (params) {
        std::vector<const char*> values;
        values.reserve(params->size());
        for (auto& p : *params)
            values.push_back(p ? p->c_str() : nullptr);
        sent = PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                                 values.data(), nullptr, nullptr, 0);
    } else {
        sent = PQsendQuery(conn_, sql.c_str());
    }
    if (!sent)
        co_return fail("cannot send a statement");
    for (;;) {
        int f = PQflush(conn_);
        if (f < 0)
            co_return fail("cannot send a statement");
        if (f == 0)
            break;
        // As libpq asks: read what the server sends meanwhile, then write again.
        if (!PQconsumeInput(conn_))
            co_return fail("the connection broke");
        auto slice =
            std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(50));
        if (!co_await wait_ready(PQsocket(conn_), readiness::write, slice) &&
            std::chrono::steady_clock::now() >= until)
            co_return fail(fmt::format("no answer within {} ms", deadline_.count()));
    }
    rows last;
    std::optional<core::error> failure;
    for (;;) {
        while (PQisBusy(conn_)) {
            if (!co_await wait_ready(PQsocket(conn_), readiness::read, until))
                co_return fail(fmt::format("no answer within {} ms", deadline_.count()));
            if (!PQconsumeInput(conn_))
                co_return fail("the connection broke");
        }
        PGresult* r = PQgetResult(conn_);
        if (!r)
            break;
        auto status = PQresultStatus(r);
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
            last = rows(r);
            continue;
        }
        if (!failure) {
            const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            failure = core::error(kind_of(state),
                                  fmt::format("PostgreSQL: {}", trimmed(PQresultErrorMessage(r))));
        }
        PQclear(r);
    }
    if (PQstatus(conn_) != CONNECTION_OK) {
        close();
        if (failure)
            co_return core::error(errc::store_unavailable, failure->detail);
        co_return core::error(errc::store_unavailable,
                              fmt::format("PostgreSQL ({}): the connection broke", target_));
    }
    if (failure)
        co_return *failure;
    co_return last;
}

asio::awaitable<core::result<rows>> connection::query(std::string sql, std::vector<param> params) {
    co_return co_await run(std::move(sql), &params);
}

asio::awaitable<core::result<void>> connection::script(std::string sql) {
    auto r = co_await run(std::move(sql), nullptr);
    if (!r)
        co_return r.error();
    co_return core::result<void>{};
}

} // namespace klingd::storage::pg
