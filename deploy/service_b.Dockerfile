# Service B: one statically linked binary, nothing else. Built by deploy/build-images.sh,
# whose build context holds only this file (as Dockerfile) and the binary.
FROM scratch
COPY service_b /service_b
USER 65532:65532
ENV SERVICE_B_LISTEN=0.0.0.0:8081
EXPOSE 8081
# No shell in the image: the binary GETs its own /health and exits 0 or 1.
HEALTHCHECK --interval=5s --timeout=3s --start-period=2s --retries=3 CMD ["/service_b", "--check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/service_b"]
