// TLS contexts for the client (system trust store plus extra anchors, peer and
// host name always verified) and for segmind-sim's server side.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <openssl/x509v3.h>
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
    SSL* ssl = stream.native_handle();
    // OpenSSL checks the name itself, so a mismatch is reported as such ("hostname
    // mismatch", "IP address mismatch") rather than as an unspecified failure.
    bool ip = false;
    boost::asio::ip::make_address(host, ec);
    ip = !ec;
    ec.clear();
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str())
                : SSL_set1_host(ssl, host.c_str());
    // SNI carries host names only (RFC 6066), never an address.
    if (ok == 1 && !ip)
        ok = static_cast<int>(SSL_set_tlsext_host_name(ssl, host.c_str()));
    if (ok != 1) {
        ec.assign(static_cast<int>(::ERR_get_error()), boost::asio::error::get_ssl_category());
        return ec;
    }
    stream.set_verify_mode(boost::asio::ssl::verify_peer);
    return ec;
}

// A readable reason for a failed verification ("certificate has expired", ...),
// or the empty string when the last handshake on this stream did not fail verification.
std::string verify_failure_reason(SSL* ssl);

} // namespace klingd::tls
