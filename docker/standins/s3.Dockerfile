# Stand-in for MinIO where no registry can be reached: moto's S3 server (the one the test suite
# uses) on port 9000, with MinIO's interface (`server /data …`, MINIO_ROOT_USER/PASSWORD accepted)
# and its objects saved to /data on stop and restored on start, so a named volume keeps them.
#   docker build --network host -f docker/standins/s3.Dockerfile -t prefcurate/s3-standin:moto .
ARG BASE_IMAGE=prefcurate/base:bookworm
FROM ${BASE_IMAGE}
ARG MOTO_VERSION=5.2.5
COPY docker/certs/ /tmp/certs/
COPY docker/constraints.txt /tmp/constraints.txt
RUN set -eu; cat /etc/ssl/certs/ca-certificates.crt /tmp/certs/*.crt > /tmp/ca.pem 2>/dev/null || true; \
    python3 -m venv /opt/moto; \
    PIP_CERT=/tmp/ca.pem PIP_CONSTRAINT=/tmp/constraints.txt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
      /opt/moto/bin/pip install "moto[s3,server]==${MOTO_VERSION}"; \
    rm -rf /tmp/certs /tmp/ca.pem /tmp/constraints.txt; mkdir -p /data
COPY docker/standins/s3_server.py /opt/moto/s3_server.py
EXPOSE 9000
VOLUME /data
ENTRYPOINT ["/opt/moto/bin/python", "/opt/moto/s3_server.py"]
CMD ["server", "/data"]
