# klingd in a container: built on Debian 12 with the -dev packages, run on
# Debian 12 with the runtime libraries only, as a non-root user.
# UNTESTED: no base image can be pulled where klingd is built; the runtime packages are
# those `ldd build/daemon/klingd` names (checked by hand).
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN ./scripts/install-deps.sh \
 && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
 && cmake --build build --target klingd klingctl

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsqlite3-0 libssl3 libfmt9 libboost-json1.81.0 libboost-url1.81.0 libpq5 libsystemd0 libtomlplusplus3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/klingd --shell /usr/sbin/nologin klingd \
 && install -d -o klingd -g klingd /var/lib/klingd /var/spool/klingd /run/klingd /etc/klingd
COPY --from=build /src/build/daemon/klingd /src/build/client/klingctl /usr/bin/
USER klingd
VOLUME ["/var/lib/klingd", "/var/spool/klingd"]
ENV KLINGD_SOCKET=/run/klingd/klingd.sock
HEALTHCHECK --interval=30s --timeout=5s CMD ["klingctl", "stats"]
ENTRYPOINT ["klingd"]
CMD ["--config", "/etc/klingd/klingd.toml"]
