// TLS contexts for the client (system trust store plus extra anchors, peer and
// host name always verified) and for segmind-sim's server side.
#pragma once

#include <boost/asio/ssl.hpp>
#include <string>

namespace klingd::tls {

// Throws std::runtime_error naming the file when extra_ca_file cannot be loaded.
boost::asio::ssl::context make_client_context(const std::string& extra_ca_file);

// Throws std::runtime_error naming the file when the certificate or key cannot be loaded.
boost::asio::ssl::context make_server_context(const std::string& cert_file,
                                              const std::string& key_file);

// Sets SNI and host name verification on a client stream before its handshake.
// Returns the OpenSSL error when SNI cannot be set.
template <typename SslStream>
boost::system::error_code prepare_client_stream(SslStream& stream, const std::string& host) {
    boost::system::error_code ec;
    if (!SSL_set_tlsext_host_name(stream.native_handle(), host.c_str())) {
        ec.assign(static_cast<int>(::ERR_get_error()), boost::asio::error::get_ssl_category());
        return ec;
    }
    stream.set_verify_mode(boost::asio::ssl::verify_peer);
    stream.set_verify_callback(boost::asio::ssl::host_name_verification(host));
    return ec;
}

// A readable reason for a failed verification ("certificate has expired", ...),
// or the empty string when the last handshake on this stream did not fail verification.
std::string verify_failure_reason(SSL* ssl);

} // namespace klingd::tls
