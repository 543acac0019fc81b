# Service A (echo): one statically linked binary, nothing else. Built by deploy/build-images.sh,
# whose build context holds only this file (as Dockerfile) and the binary.
FROM scratch
COPY service_a /service_a
USER 65532:65532
ENV SERVICE_A_LISTEN=0.0.0.0:8080
EXPOSE 8080
# No shell in the image: the binary GETs its own /health and exits 0 or 1.
HEALTHCHECK --interval=5s --timeout=3s --start-period=2s --retries=3 CMD ["/service_a", "--check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/service_a"]
