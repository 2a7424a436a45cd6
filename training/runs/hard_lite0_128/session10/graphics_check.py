import sys, numpy as np, tempfile, os
sys.path.insert(0, 'tests')
from conftest import make_photo
from PIL import Image
from copyscan.models import create_model
from copyscan.decode import decode_file
d = tempfile.mkdtemp(); w, h = 640, 480
paths = []
for s in range(6):
    p = f"{d}/img{s}.jpg"; make_photo(p, size=(w, h), seed=200 + s); paths.append(p)
im = Image.open(f"{d}/img0.jpg"); im.resize((w//2, h//2), Image.LANCZOS).save(f"{d}/img0_half.jpg", quality=85); paths.append(f"{d}/img0_half.jpg")
im = Image.open(f"{d}/img1.jpg"); dx, dy = round(w*0.05), round(h*0.05); im.crop((dx//2, dy//2, w-dx//2, h-dy//2)).save(f"{d}/img1_crop.jpg", quality=70); paths.append(f"{d}/img1_crop.jpg")
Image.open(f"{d}/img2.jpg").save(f"{d}/img2_q60.jpg", quality=60); paths.append(f"{d}/img2_q60.jpg")
owner = [0,1,2,3,4,5,0,1,2]
for m in sys.argv[1:]:
    model = create_model(m, "cpu")
    x = model.embed(np.stack([decode_file(p, model.input_size).pixels for p in paths]))
    s = x @ x.T
    cross = max(s[i, j] for i in range(9) for j in range(9) if owner[i] != owner[j])
    true = min(s[i, j] for i in range(9) for j in range(9) if i != j and owner[i] == owner[j])
    print(m, model.info.runtime, "max unrelated", round(float(cross), 3), "min copy", round(float(true), 3))
