# One image for every restyle process; the command picks the role.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN ./install.sh
ENV RESTYLE_STATE_DIR=/var/lib/restyle RESTYLE_WEB_HOST=0.0.0.0
ENTRYPOINT ["restyle"]
CMD ["worker", "cpu"]
