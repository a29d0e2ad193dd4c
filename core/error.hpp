// The one error convention for failures a caller must expect (bad input, a busy
// or full database, an unknown job, a URL klingd will not use): core::result<T>,
// which holds a T or an error, that is a code of klingd's own category (errc)
// and a detail for people (what and where). Exceptions are kept for programming
// errors and for start-up, where the daemon cannot go on.
#pragma once

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>
#include <string>
#include <type_traits>

namespace klingd::core {

enum class errc {
    // URLs
    url_not_http = 1,  // not an absolute http:// or https:// URL
    url_malformed,     // not a URL at all
    url_has_userinfo,  // user or password in the URL
    url_no_host,       // no host at all
    url_bad_host,      // a host klingd does not accept
    url_bad_port,      // a port outside 1 to 65535
    url_too_long,      // more than 8192 characters
    url_bad_character, // a space or a control character
    // Jobs and their actions
    job_not_found, // no job with that id
    wrong_state,   // the job's state does not allow the action
    id_conflict,   // the id is taken by a job with other content
    invalid_job,   // a job file or request that does not validate
    bad_request,   // a malformed request on the control socket
    // The control socket, from the client's side
    unreachable,  // klingd cannot be reached or did not answer
    stream_ended, // klingd closed the event stream
    streams_full, // klingd keeps as many event streams open as it will (503)
    // Storage and files
    store_busy,        // the database is locked by another process
    store_full,        // the disk or the database is full
    store_read_only,   // the database cannot be written
    store_failed,      // any other database failure
    store_unavailable, // the database server cannot be reached, or the connection broke
    claim_lost,        // in a cluster: this node no longer holds the job's claim
    node_name_taken,   // in a cluster: a live node holds this node's name
    spend_limit,       // a submission would take the day's or month's spend above its limit
    io_failed,         // a file operation failed
};

const boost::system::error_category& klingd_category() noexcept;

inline boost::system::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), klingd_category()};
}

// An expected failure: its kind, and what happened where, for people.
struct error {
    boost::system::error_code code;
    std::string detail;

    error() = default;
    error(boost::system::error_code c, std::string d = {}) : code(c), detail(std::move(d)) {}
    error(errc e, std::string d = {}) : code(make_error_code(e)), detail(std::move(d)) {}

    // The detail, or the code's message when there is none.
    std::string message() const { return detail.empty() ? code.message() : detail; }
    bool operator==(errc e) const { return code == make_error_code(e); }
};

template <class T>
using result = boost::system::result<T, error>;

// What result<T>::value() throws when it holds an error (a programming error by then).
[[noreturn]] void throw_exception_from_error(const error& e, const boost::source_location& loc);

} // namespace klingd::core

template <>
struct boost::system::is_error_code_enum<klingd::core::errc> : std::true_type {};
