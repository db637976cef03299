# Boot entry point: run the Auxilio device from the filesystem root (firmware contract).
import app

app.main("/")
