// A Beast body for every segmind-sim answer: a text (JSON, HTML) or a media file
// made chunk by chunk as it is written, so a large file never sits in memory.
// send_limit cuts the body short while the header still announces the full size.
#pragma once

#include "sim/media.hpp"

#include <algorithm>
#include <boost/beast/http/message.hpp>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>

namespace klingd::sim {

struct payload_body {
    struct value_type {
        std::string text;
        std::optional<media_file> media;
        std::uint64_t send_limit = std::numeric_limits<std::uint64_t>::max();
    };

    static std::uint64_t size(const value_type& v) {
        return v.media ? v.media->size : v.text.size();
    }

    class writer {
    public:
        using const_buffers_type = boost::asio::const_buffer;

        template <bool is_request, class Fields>
        writer(const boost::beast::http::header<is_request, Fields>&, const value_type& v)
            : body_(v), end_(std::min(size(v), v.send_limit)) {}

        void init(boost::system::error_code& ec) {
            ec = {};
            if (body_.media)
                chunk_ = std::make_unique<char[]>(chunk_size);
        }

        boost::optional<std::pair<const_buffers_type, bool>> get(boost::system::error_code& ec) {
            ec = {};
            if (pos_ >= end_)
                return boost::none;
            auto n = static_cast<std::size_t>(std::min<std::uint64_t>(end_ - pos_, chunk_size));
            const char* data = body_.text.data() + pos_;
            if (body_.media) {
                fill_media(*body_.media, pos_, {chunk_.get(), n});
                data = chunk_.get();
            } else {
                n = static_cast<std::size_t>(end_ - pos_);
            }
            pos_ += n;
            return {{const_buffers_type(data, n), pos_ < end_}};
        }

    private:
        static constexpr std::size_t chunk_size = 64 * 1024;
        const value_type& body_;
        std::uint64_t end_;
        std::uint64_t pos_ = 0;
        std::unique_ptr<char[]> chunk_;
    };
};

} // namespace klingd::sim
