// klingd's error category: a message for each errc.
#include "core/error.hpp"

#include <boost/throw_exception.hpp>
#include <stdexcept>

namespace klingd::core {

namespace {

class category_impl final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "klingd"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
        case errc::url_not_http:
            return "is not an absolute http:// or https:// URL";
        case errc::url_malformed:
            return "is not a well-formed URL";
        case errc::url_has_userinfo:
            return "carries a user name or password";
        case errc::url_no_host:
            return "has no host";
        case errc::url_bad_host:
            return "has a bad host: a host is a name of letters, digits and \"._~-\", an IPv4 "
                   "address or a bracketed IPv6 address";
        case errc::url_bad_port:
            return "has a bad port: must be 1 to 65535";
        case errc::url_too_long:
            return "is longer than 8192 characters";
        case errc::url_bad_character:
            return "contains a space or a control character";
        case errc::job_not_found:
            return "no such job";
        case errc::wrong_state:
            return "the job's state does not allow that";
        case errc::id_conflict:
            return "the id is taken by a job with other content";
        case errc::invalid_job:
            return "the job does not validate";
        case errc::bad_request:
            return "malformed request";
        case errc::unreachable:
            return "klingd cannot be reached";
        case errc::stream_ended:
            return "klingd closed the event stream";
        case errc::streams_full:
            return "klingd has as many event streams open as it keeps";
        case errc::store_busy:
            return "the database is locked by another process";
        case errc::store_full:
            return "the disk or the database is full";
        case errc::store_read_only:
            return "the database cannot be written";
        case errc::store_failed:
            return "the database failed";
        case errc::store_unavailable:
            return "the database server cannot be reached";
        case errc::claim_lost:
            return "this node no longer holds the job's claim";
        case errc::node_name_taken:
            return "a live node of the cluster has this node's name";
        case errc::spend_limit:
            return "a spend limit would be passed";
        case errc::io_failed:
            return "a file operation failed";
        }
        return "unknown klingd error";
    }
};

} // namespace

const boost::system::error_category& klingd_category() noexcept {
    static const category_impl c;
    return c;
}

void throw_exception_from_error(const error& e, const boost::source_location& loc) {
    boost::throw_exception(std::runtime_error(e.message()), loc);
}

} // namespace klingd::core
