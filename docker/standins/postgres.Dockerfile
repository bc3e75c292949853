# Stand-in for the official postgres image where no registry can be reached: Debian's own
# PostgreSQL 15 on the local base, with the official image's interface (POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, PGDATA=/var/lib/postgresql/data, /docker-entrypoint-initdb.d).
#   docker build --network host -f docker/standins/postgres.Dockerfile -t prefcurate/postgres-standin:15 .
ARG BASE_IMAGE=prefcurate/base:bookworm
FROM ${BASE_IMAGE}
RUN set -eu; mkdir -p /etc/postgresql-common; echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
    apt-get update; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15; \
    rm -rf /var/lib/apt/lists/*
COPY docker/standins/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:${PATH}
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh && mkdir -p /docker-entrypoint-initdb.d
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
